import { randomBytes, randomUUID } from 'node:crypto';
import { loadConfig } from '../../../orchestrator/config';
import type { Deployment, DeploymentStore } from '../../../orchestrator/deployments/deployment-store';
import { makeHcloudDns } from '../../../orchestrator/dns/hcloud-dns';
import { classify } from '../../../orchestrator/errors';
import { makeHcloudApi } from '../../../orchestrator/infra/hcloud/api';
import { makeHcloudHostProvider } from '../../../orchestrator/infra/hcloud/provider';
import { ensurePlatformStack, platformSshKeyId } from '../../../orchestrator/infra/hcloud/platform-stack';
import { makeStackRunner } from '../../../orchestrator/infra/hcloud/stack-runner';
import { makeLogger } from '../../../orchestrator/log';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { deprovisionSteps } from '../../../orchestrator/steps/deprovision-steps';
import { provisionSteps } from '../../../orchestrator/steps/provision-steps';
import type { StepContext, StepDef } from '../../../orchestrator/steps/step-runner';
import { makeFakeHcloudApi } from '../../support/fake-hcloud-api';
import { makeFakeWorkspace, runProgramWithMocks, type Engine } from '../../support/fake-workspace';

/**
 * The hcloud path of the pipeline's `host`, `dns` and deprovision `host` steps: the real hcloud
 * provider and Pulumi program against the fake workspace of the infrastructure tests, and the hcloud
 * DNS verifier against a fake authoritative answer. (SSH and HTTPS to a Hetzner server cannot run
 * here; the local path covers those steps for real.)
 */
const addresses = { ipv4: '198.51.100.42', ipv6: '2001:db8:42::1' };
const log = makeLogger({ level: 'silent' });

const setup = async (served: { ipv4: string[]; ipv6: string[] }) => {
  const config = loadConfig({
    HOST_PROVIDER: 'hcloud',
    HCLOUD_TOKEN: 'a'.repeat(64),
    DNS_ZONE: 'agents.example.com',
    ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32',
    ACME_EMAIL: 'ops@example.com',
  });
  const engine: Engine = (program, ctx) => runProgramWithMocks(program, { ...ctx, addresses });
  const fake = makeFakeWorkspace({ engine });
  const runner = makeStackRunner({
    workspace: fake.workspace,
    log,
    staleLockMs: 3_600_000,
    timeoutMs: 30_000,
  });
  const orchestratorPublicKey = generateHostKeyPair().publicKey;
  await ensurePlatformStack(runner, { orchestratorPublicKey, pollInterval: config.HCLOUD_POLL_INTERVAL });
  // The Hetzner API (DNS preflight, protection) against a fake project holding the zone.
  const api = makeHcloudApi({
    token: 'a'.repeat(64),
    fetch: makeFakeHcloudApi({ zones: [config.DNS_ZONE] }).fetch,
  });
  const hosts = makeHcloudHostProvider({
    runner,
    settings: config,
    sshKeyId: platformSshKeyId(runner),
    api,
    log,
  });
  const dns = makeHcloudDns({ zone: config.DNS_ZONE, query: async () => served });

  let dep = {
    id: randomUUID(),
    orgId: randomUUID(),
    subdomain: `agent-${randomBytes(3).toString('hex')}`,
    runtime: 'echo',
    region: 'fsn1',
    serverType: 'cx23',
    status: 'provisioning',
    serverId: null,
    ipv4: null,
    ipv6: null,
    dnsName: null,
    hostPublicKey: null,
    hostPublicKeyPending: null,
  } as unknown as Deployment;
  const store = {
    get: async () => dep,
    recordHost: async (
      _id: string,
      h: { serverId: string; ipv4: string; ipv6?: string; hostPublicKey?: string },
    ) =>
      (dep = {
        ...dep,
        serverId: h.serverId,
        ipv4: h.ipv4,
        ipv6: h.ipv6 ?? null,
        hostPublicKey: dep.hostPublicKey ?? h.hostPublicKey ?? null,
      }),
    recordDns: async (_id: string, name: string | null) => (dep = { ...dep, dnsName: name }),
    hostKey: async () => (dep = { ...dep, hostPublicKey: null, serverId: null, ipv4: null, ipv6: null }),
  } as unknown as DeploymentStore;
  const deps = {
    store,
    hosts,
    dns,
    secrets: {} as never,
    access: {} as never,
    orchestratorPublicKey: async () => orchestratorPublicKey,
    zone: config.DNS_ZONE,
    tls: { mode: 'acme' as const, email: 'ops@example.com' },
    installPackages: true,
  };
  const steps = provisionSteps(deps);
  const byName = (list: StepDef[], n: string): StepDef => list.find((s) => s.name === n) as StepDef;
  const ctx = (): StepContext => ({
    deployment: dep,
    run: 1,
    jobId: 'provision-x',
    signal: new AbortController().signal,
    log,
  });
  return {
    fake,
    hosts,
    now: () => dep,
    setPin: (k: string) => (dep = { ...dep, hostPublicKey: k }),
    host: () => byName(steps, 'host').apply(ctx()),
    dnsStep: () => byName(steps, 'dns').apply(ctx()),
    teardownHost: () => byName(deprovisionSteps({ ...deps, secrets: {} as never }), 'host').apply(ctx()),
  };
};

describe('pipeline steps on the hcloud path (fake workspace)', () => {
  it('host makes one stack with one server and pins the key it put in user data; a retry adopts it and never re-pins', async () => {
    const t = await setup({ ipv4: [addresses.ipv4], ipv6: [addresses.ipv6] });
    await t.host();
    const d = t.now();
    const stack = t.fake.stacks.get(`agent-${d.id}`);
    const servers = stack?.resources.filter((r) => r.type === 'hcloud:index/server:Server') ?? [];
    expect(servers).toHaveLength(1);
    expect({ serverId: d.serverId, ipv4: d.ipv4 }).toEqual({
      serverId: servers[0]?.assignedId,
      ipv4: addresses.ipv4,
    });
    expect(d.hostPublicKey).toMatch(/^ssh-ed25519 /);
    // The server's user data carries exactly the pinned key's private half (a Pulumi secret).
    expect(JSON.stringify(servers[0]?.inputs)).toContain(d.hostPublicKey?.split(' ')[1]);

    // After a re-key the record pins another key; the retry adopts the server and keeps that pin.
    const rekeyed = generateHostKeyPair().publicKey;
    t.setPin(rekeyed);
    await t.host();
    expect(t.now().hostPublicKey).toBe(rekeyed);
    expect(
      t.fake.stacks.get(`agent-${d.id}`)?.resources.filter((r) => r.type === 'hcloud:index/server:Server'),
    ).toHaveLength(1);
  });

  it('dns verifies the stack record is served with exactly the address; not served yet is a retryable error', async () => {
    const t = await setup({ ipv4: [addresses.ipv4], ipv6: [addresses.ipv6] });
    await t.host();
    await t.dnsStep();
    expect(t.now().dnsName).toBe(`${t.now().subdomain}.agents.example.com`);

    const u = await setup({ ipv4: [], ipv6: [] });
    await u.host();
    const err = await u.dnsStep().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'provider_unavailable' });
    expect(classify(err)).toBe('retry');
    expect(u.now().dnsName).toBeNull();
  });

  it('deprovision host destroys the stack and clears the record', async () => {
    const t = await setup({ ipv4: [addresses.ipv4], ipv6: [addresses.ipv6] });
    await t.host();
    const id = t.now().id;
    expect(t.fake.stacks.has(`agent-${id}`)).toBe(true);
    await t.teardownHost();
    expect(await t.hosts.describe(id)).toBeUndefined();
    expect(t.now().hostPublicKey).toBeNull();
  });
});
