import { randomBytes, randomUUID } from 'node:crypto';
import YAML from 'yaml';
import { loadConfig } from '../../../../orchestrator/config';
import { makeLogger } from '../../../../orchestrator/log';
import type { HostSpec } from '../../../../orchestrator/infra/host-provider';
import { makeHcloudApi } from '../../../../orchestrator/infra/hcloud/api';
import { makeHcloudHostProvider } from '../../../../orchestrator/infra/hcloud/provider';
import { ensurePlatformStack, platformSshKeyId } from '../../../../orchestrator/infra/hcloud/platform-stack';
import { makeStackRunner } from '../../../../orchestrator/infra/hcloud/stack-runner';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { Secret } from '../../../../orchestrator/secret';
import { canary } from '../../../support/canary';
import { makeFakeHcloudApi } from '../../../support/fake-hcloud-api';
import { makeFakeWorkspace, runProgramWithMocks, type Engine } from '../../../support/fake-workspace';
import { rejection } from '../../../support/rejection';

const addresses = { ipv4: '198.51.100.77', ipv6: '2001:db8:77::1' };
const orchestratorKey = `${generateHostKeyPair().publicKey} cortex`;

const hostKeys = () => {
  const pair = generateHostKeyPair();
  return { privateKey: pair.privateKey.reveal(), publicKey: pair.publicKey };
};

const specFor = (over: Partial<HostSpec> = {}): HostSpec & { hostPrivateKey: string } => {
  const keys = hostKeys();
  const userData = `#cloud-config\n${YAML.stringify({
    ssh_deletekeys: true,
    ssh_keys: { ed25519_private: keys.privateKey, ed25519_public: keys.publicKey },
    ssh_authorized_keys: [orchestratorKey],
  })}`;
  return {
    deploymentId: randomUUID(),
    orgId: randomUUID(),
    subdomain: `agent-${randomBytes(3).toString('hex')}`,
    userData: new Secret(userData),
    hostPublicKey: keys.publicKey,
    hostPrivateKey: keys.privateKey,
    // What the deployments service stores at request time (region, server_type).
    location: 'fsn1',
    serverType: 'cx23',
    ...over,
  };
};

const setup = async (env: Record<string, string> = {}) => {
  const config = loadConfig({
    HOST_PROVIDER: 'hcloud',
    HCLOUD_TOKEN: 'a'.repeat(64),
    DNS_ZONE: 'agents.example.com',
    ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32,2001:db8:ffff::/48',
    HCLOUD_POLL_INTERVAL: '6s',
    ...env,
  });
  const engine: Engine = (program, ctx) => runProgramWithMocks(program, { ...ctx, addresses });
  // One fake Hetzner project behind both the fake `pulumi` and the API client.
  const cloud = makeFakeHcloudApi({ zones: ['agents.example.com'] });
  const fake = makeFakeWorkspace({ engine, provider: cloud.provider });
  const api = makeHcloudApi({ token: config.HCLOUD_TOKEN!, fetch: cloud.fetch });
  const logs: string[] = [];
  const log = makeLogger({ level: 'debug' }, { write: (s: string) => void logs.push(s) });
  const runner = makeStackRunner({
    workspace: fake.workspace,
    log,
    staleLockMs: 60 * 60_000,
    timeoutMs: 30_000,
  });
  await ensurePlatformStack(runner, {
    orchestratorPublicKey: orchestratorKey,
    pollInterval: config.HCLOUD_POLL_INTERVAL,
  });
  const hosts = makeHcloudHostProvider({
    runner,
    settings: config,
    sshKeyId: platformSshKeyId(runner),
    api,
    log,
  });
  return { config, fake, hosts, runner, logs, cloud, api, engine, log };
};

describe('hcloud host provider (stack runner + fake workspace + the real program under mocks)', () => {
  it('ensures a host: server, firewall and DNS in one stack; returns the shared host description', async () => {
    const { fake, hosts } = await setup();
    const spec = specFor({ location: 'nbg1' });
    const host = await hosts.ensure(spec);

    const stack = fake.stacks.get(`agent-${spec.deploymentId}`)!;
    const server = stack.resources.find((r) => r.type === 'hcloud:index/server:Server')!;
    const sshKey = fake.stacks
      .get('platform')!
      .resources.find((r) => r.type === 'hcloud:index/sshKey:SshKey')!;
    expect(host).toEqual({
      deploymentId: spec.deploymentId,
      serverId: server.assignedId,
      ipv4: addresses.ipv4,
      ipv6: addresses.ipv6,
      dnsName: `${spec.subdomain}.agents.example.com`,
      hostPublicKey: spec.hostPublicKey,
      state: 'running',
    });
    expect(server.inputs).toMatchObject({
      location: 'nbg1',
      serverType: 'cx23',
      sshKeys: [sshKey.assignedId],
    });
    expect(stack.config['cortex:sshCidrs']?.value).toBe('["192.0.2.10/32","2001:db8:ffff::/48"]');
    expect(stack.config['cortex:pollInterval']?.value).toBe('6s');
    expect(stack.resources.find((r) => r.type === 'pulumi:providers:hcloud')?.inputs.pollInterval).toBe('6s');
  });

  it('is idempotent: a second ensure returns the same host and adds nothing', async () => {
    const { fake, hosts } = await setup();
    const spec = specFor();
    const first = await hosts.ensure(spec);
    const second = await hosts.ensure(spec);
    expect(second).toEqual(first);
    expect([...fake.stacks.keys()].sort()).toEqual([`agent-${spec.deploymentId}`, 'platform'].sort());
    expect(await hosts.describe(spec.deploymentId)).toEqual(first);
  });

  it('a retry carrying the current (re-keyed) pin is not refused and touches no resource; describe then hands it out', async () => {
    const { fake, hosts } = await setup();
    const spec = specFor();
    const first = await hosts.ensure(spec);
    const resources = JSON.stringify(fake.stacks.get(`agent-${spec.deploymentId}`)!.resources);
    const rekeyed = hostKeys();
    const again = await hosts.ensure({ ...spec, hostPublicKey: rekeyed.publicKey });
    expect(again).toEqual({ ...first, hostPublicKey: rekeyed.publicKey });
    expect(JSON.stringify(fake.stacks.get(`agent-${spec.deploymentId}`)!.resources)).toBe(resources);
    expect((await hosts.describe(spec.deploymentId))?.hostPublicKey).toBe(rekeyed.publicKey);
  });

  it('describes a missing host as undefined, and rejects a malformed id', async () => {
    const { hosts } = await setup();
    expect(await hosts.describe(randomUUID())).toBeUndefined();
    expect((await rejection(hosts.describe('../etc'))).field).toBe('deploymentId');
  });

  it('destroys the host and its stack; destroying again is done; list follows', async () => {
    const { fake, hosts } = await setup();
    const a = specFor();
    const b = specFor();
    await hosts.ensure(a);
    await hosts.ensure(b);
    expect((await hosts.list()).sort()).toEqual([a.deploymentId, b.deploymentId].sort());
    await hosts.destroy(a.deploymentId);
    expect(fake.stacks.has(`agent-${a.deploymentId}`)).toBe(false);
    expect(await hosts.describe(a.deploymentId)).toBeUndefined();
    await expect(hosts.destroy(a.deploymentId)).resolves.toBeUndefined();
    expect(await hosts.list()).toEqual([b.deploymentId]);
  });

  it('rejects bad input naming the field before any stack operation', async () => {
    const { fake, hosts } = await setup();
    const before = fake.commandLines.length;
    expect((await rejection(hosts.ensure(specFor({ subdomain: 'Bad_Label' })))).field).toBe('subdomain');
    expect((await rejection(hosts.ensure(specFor({ userData: new Secret('  ') })))).field).toBe('userData');
    // A plain string (the host private key unwrapped) is refused, not passed on.
    const plain = specFor();
    const unwrapped = await rejection(
      hosts.ensure({ ...plain, userData: plain.userData.reveal() as unknown as Secret }),
    );
    expect({ code: unwrapped.code, field: unwrapped.field }).toEqual({
      code: 'invalid_input',
      field: 'userData',
    });
    expect(unwrapped.message).not.toContain(plain.hostPrivateKey.split('\n')[1] ?? '');
    expect((await rejection(hosts.ensure(specFor({ hostPublicKey: 'not a key' })))).field).toBe(
      'hostPublicKey',
    );
    expect(fake.commandLines.length).toBe(before);
  });

  it('says how to create the platform stack when it is missing', async () => {
    const fake = makeFakeWorkspace();
    const log = makeLogger({ level: 'silent' });
    const runner = makeStackRunner({
      workspace: fake.workspace,
      log,
      staleLockMs: 60 * 60_000,
      timeoutMs: 30_000,
    });
    const err = await rejection(platformSshKeyId(runner)());
    expect(err.code).toBe('config_invalid');
    expect(String((err as unknown as Error).message)).toContain('pulumi up -s platform');
  });

  it('keeps canaries out of resource inputs, stack config, CLI command lines, outputs and logs', async () => {
    const customerKey = canary('anthropic');
    const serviceKey = canary('other');
    const token = randomBytes(32).toString('hex');
    const saved = { ...process.env };
    process.env.ANTHROPIC_API_KEY = customerKey;
    process.env.HCLOUD_TOKEN = token;
    try {
      const { fake, hosts, logs } = await setup({
        HCLOUD_TOKEN: token,
        SUPABASE_SERVICE_ROLE_KEY: serviceKey,
        PULUMI_CONFIG_PASSPHRASE: canary('other'),
      });
      const spec = specFor();
      const host = await hosts.ensure(spec);
      await hosts.describe(spec.deploymentId);
      const stack = fake.stacks.get(`agent-${spec.deploymentId}`)!;
      const server = stack.resources.find((r) => r.type === 'hcloud:index/server:Server')!;
      const { userData: _secretUserData, ...serverRest } = server.inputs as Record<string, unknown>;
      const everywhere = [
        JSON.stringify(stack.resources.filter((r) => r !== server).map((r) => r.inputs)),
        JSON.stringify(serverRest),
        JSON.stringify([...fake.stacks.values()].map((s) => s.config)),
        JSON.stringify(fake.commandLines),
        JSON.stringify(stack.outputs),
        JSON.stringify(host),
        logs.join(''),
      ].join('\n');
      // The search can see the program's inputs: the host's public key is there…
      expect(everywhere).toContain(spec.hostPublicKey.split(' ')[1]);
      // …but no platform or customer secret, and the host private key only in the secret user data.
      const privateKeyLine = spec.hostPrivateKey.split('\n')[1]!;
      for (const secret of [customerKey, serviceKey, token, privateKeyLine])
        expect(everywhere).not.toContain(secret);
      expect(JSON.stringify(server.inputs.userData)).toContain(privateKeyLine);
    } finally {
      process.env = saved;
    }
  });
});
