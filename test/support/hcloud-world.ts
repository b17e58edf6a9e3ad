import { randomBytes, randomUUID } from 'node:crypto';
import YAML from 'yaml';
import { loadConfig } from '../../orchestrator/config';
import { makeHcloudApi } from '../../orchestrator/infra/hcloud/api';
import { makeHcloudHostProvider } from '../../orchestrator/infra/hcloud/provider';
import type { HostSpec } from '../../orchestrator/infra/host-provider';
import { ensurePlatformStack, platformSshKeyId } from '../../orchestrator/infra/hcloud/platform-stack';
import { makeStackRunner } from '../../orchestrator/infra/hcloud/stack-runner';
import { makeLogger } from '../../orchestrator/log';
import { generateHostKeyPair } from '../../orchestrator/remote/host-keys';
import { Secret } from '../../orchestrator/secret';
import { makeFakeHcloudApi } from './fake-hcloud-api';
import { makeFakeWorkspace, runProgramWithMocks, type Engine } from './fake-workspace';

/**
 * The hcloud provider against one fake Hetzner project that both the fake `pulumi` (through its
 * provider model) and the API client see: a server `up` creates is one the API lists; one deleted
 * "by hand" is missing for the next destroy.
 */
export const ZONE = 'agents.example.com';
export const addresses = { ipv4: '198.51.100.77', ipv6: '2001:db8:77::1' };

export const hostSpec = (over: Partial<HostSpec> = {}): HostSpec => {
  const keys = generateHostKeyPair();
  const userData = `#cloud-config\n${YAML.stringify({
    ssh_keys: { ed25519_private: keys.privateKey.reveal(), ed25519_public: keys.publicKey },
  })}`;
  return {
    deploymentId: randomUUID(),
    orgId: randomUUID(),
    subdomain: `agent-${randomBytes(3).toString('hex')}`,
    userData: new Secret(userData),
    hostPublicKey: keys.publicKey,
    location: 'fsn1',
    serverType: 'cx23',
    ...over,
  };
};

export const hcloudWorld = async (env: Record<string, string> = {}, opts: { zones?: string[] } = {}) => {
  const config = loadConfig({
    HOST_PROVIDER: 'hcloud',
    HCLOUD_TOKEN: randomBytes(32).toString('hex'),
    DNS_ZONE: ZONE,
    ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32',
    ...env,
  });
  const cloud = makeFakeHcloudApi({ zones: opts.zones ?? [ZONE] });
  const engine: Engine = (program, ctx) => runProgramWithMocks(program, { ...ctx, addresses });
  const fake = makeFakeWorkspace({ engine, provider: cloud.provider });
  const log = makeLogger({ level: 'silent' });
  const runner = makeStackRunner({
    workspace: fake.workspace,
    log,
    staleLockMs: 3_600_000,
    timeoutMs: 30_000,
  });
  await ensurePlatformStack(runner, {
    orchestratorPublicKey: generateHostKeyPair().publicKey,
    pollInterval: config.HCLOUD_POLL_INTERVAL,
  });
  const api = makeHcloudApi({ token: config.HCLOUD_TOKEN!, fetch: cloud.fetch });
  const clock = { ms: 1_000_000 };
  const sshKeyId = platformSshKeyId(runner, { now: () => clock.ms });
  const provider = (settings = config) => makeHcloudHostProvider({ runner, settings, sshKeyId, api, log });
  const ups = () => fake.commandLines.filter((c) => c[1] === 'up').length;
  const serversOf = (deploymentId: string) =>
    [...cloud.servers.values()].filter((s) => s.labels['deployment'] === deploymentId);
  return { config, cloud, fake, runner, api, hosts: provider(), provider, ups, serversOf, log, clock };
};
