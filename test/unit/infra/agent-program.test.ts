import { randomUUID, randomBytes } from 'node:crypto';
import * as pulumi from '@pulumi/pulumi';
import { specialSecretSig, specialSigKey } from '@pulumi/pulumi/runtime/rpc';
import {
  agentStackConfig,
  parseAgentSettings,
  type AgentSettingsInput,
} from '../../../orchestrator/infra/agent-inputs';
import { agentProgram, DNS_TTL } from '../../../orchestrator/infra/agent-program';
import { programFor } from '../../../orchestrator/infra/stack-programs';
import { agentStackName, PULUMI_PROJECT } from '../../../orchestrator/infra/stack-names';
import { canary } from '../../support/canary';
import { runProgramWithMocks, type RegisteredResource, type ProgramRun } from '../../support/fake-workspace';

const deploymentId = randomUUID();
const orgId = randomUUID();
const addresses = { ipv4: '198.51.100.23', ipv6: '2001:db8:1234::1' };
const hostPublicKey = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTestsOnly0000000000000000 host';

const settings = (over: Partial<AgentSettingsInput> = {}) =>
  parseAgentSettings({
    deploymentId,
    orgId,
    subdomain: 'acme-bot',
    zone: 'agents.example.com',
    location: 'hel1',
    sshKeyId: '777001',
    sshCidrs: ['192.0.2.10/32', '2001:db8:ffff::/48'],
    hostPublicKey,
    pollInterval: '7s',
    ...over,
  });

const userData = `#cloud-config\nssh_keys:\n  ed25519_public: ${hostPublicKey}\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    ${randomBytes(32).toString('base64')}\n`;

const run = (
  over: Partial<AgentSettingsInput> = {},
  ud: string | undefined = userData,
): Promise<ProgramRun> =>
  runProgramWithMocks(agentProgram(ud), {
    project: PULUMI_PROJECT,
    stack: agentStackName(deploymentId),
    config: agentStackConfig(settings(over)),
    addresses,
  });

const ofType = (r: ProgramRun, type: string): RegisteredResource[] =>
  r.resources.filter((x) => x.type === type);
const one = (r: ProgramRun, type: string): RegisteredResource => {
  const found = ofType(r, type);
  expect(found).toHaveLength(1);
  return found[0]!;
};
const isSecretValue = (v: unknown): v is { value: unknown } =>
  typeof v === 'object' && v !== null && (v as Record<string, unknown>)[specialSigKey] === specialSecretSig;

describe('agent program (pulumi mocks)', () => {
  let result: ProgramRun;
  beforeAll(async () => {
    result = await run();
  });

  it('declares exactly a provider, a firewall, a server and two DNS record sets', () => {
    expect(result.resources.map((r) => r.type).sort()).toEqual([
      'hcloud:index/firewall:Firewall',
      'hcloud:index/server:Server',
      'hcloud:index/zoneRrset:ZoneRrset',
      'hcloud:index/zoneRrset:ZoneRrset',
      'pulumi:providers:hcloud',
    ]);
  });

  it('raises the provider polling interval from config and gives it no token', () => {
    const provider = one(result, 'pulumi:providers:hcloud');
    expect(provider.inputs.pollInterval).toBe('7s');
    expect(provider.inputs.token).toBeUndefined();
    for (const r of result.resources.filter((x) => x.type.startsWith('hcloud:')))
      expect(r.provider).toContain(`pulumi:providers:hcloud::hcloud::${provider.assignedId}`);
  });

  it('creates the server from its inputs: type, image, location, labels, orchestrator key', () => {
    const server = one(result, 'hcloud:index/server:Server');
    expect(server.inputs).toMatchObject({
      name: `agent-${deploymentId}`,
      serverType: 'cx23',
      image: 'ubuntu-24.04',
      location: 'hel1',
      labels: { org: orgId, deployment: deploymentId, 'managed-by': 'cortex' },
      sshKeys: ['777001'],
    });
    expect(server.inputs.datacenter).toBeUndefined();
  });

  it('honours a server type from the settings', async () => {
    const other = await run({ serverType: 'cax11' });
    expect(one(other, 'hcloud:index/server:Server').inputs.serverType).toBe('cax11');
  });

  it('opens SSH only to the configured CIDRs, 80/443 and ICMP to everyone, nothing else', () => {
    const rules = one(result, 'hcloud:index/firewall:Firewall').inputs.rules as Record<string, unknown>[];
    const anywhere = ['0.0.0.0/0', '::/0'];
    const rule = (protocol: string, port?: string) =>
      rules.filter((r) => r.protocol === protocol && r.port === port && r.direction === 'in');
    expect(rule('tcp', '22')).toHaveLength(1);
    expect(rule('tcp', '22')[0]!.sourceIps).toEqual(['192.0.2.10/32', '2001:db8:ffff::/48']);
    expect(rule('tcp', '80')[0]!.sourceIps).toEqual(anywhere);
    expect(rule('tcp', '443')[0]!.sourceIps).toEqual(anywhere);
    expect(rule('icmp', undefined)[0]!.sourceIps).toEqual(anywhere);
    expect(rules).toHaveLength(4);
    expect(rules.every((r) => r.direction === 'in')).toBe(true);
  });

  it('attaches the firewall to the server by id', () => {
    const firewall = one(result, 'hcloud:index/firewall:Firewall');
    const server = one(result, 'hcloud:index/server:Server');
    expect(server.inputs.firewallIds).toEqual([Number(firewall.assignedId)]);
  });

  it('points A and AAAA records of <subdomain> in the zone at the server addresses', () => {
    const records = ofType(result, 'hcloud:index/zoneRrset:ZoneRrset').map((r) => r.inputs);
    const a = records.find((r) => r.type === 'A');
    const aaaa = records.find((r) => r.type === 'AAAA');
    expect(a).toMatchObject({
      zone: 'agents.example.com',
      name: 'acme-bot',
      ttl: DNS_TTL,
      records: [{ value: addresses.ipv4 }],
    });
    expect(aaaa).toMatchObject({
      zone: 'agents.example.com',
      name: 'acme-bot',
      records: [{ value: addresses.ipv6 }],
    });
  });

  it('passes the user data as a secret', () => {
    const server = one(result, 'hcloud:index/server:Server');
    expect(isSecretValue(server.inputs.userData)).toBe(true);
    expect((server.inputs.userData as { value: unknown }).value).toBe(userData);
  });

  it('exports server id, addresses, DNS name and the pinned host key, none of them secret', () => {
    const server = one(result, 'hcloud:index/server:Server');
    expect(result.outputs).toEqual({
      serverId: { value: server.assignedId, secret: false },
      ipv4: { value: addresses.ipv4, secret: false },
      ipv6: { value: addresses.ipv6, secret: false },
      dnsName: { value: 'acme-bot.agents.example.com', secret: false },
      hostPublicKey: { value: hostPublicKey, secret: false },
    });
  });

  it('is a pure function of its inputs: two runs declare the same resources', async () => {
    const again = await run();
    const shape = (r: ProgramRun) =>
      r.resources.map(({ type, name, inputs }) => ({
        type,
        name,
        inputs: { ...inputs, firewallIds: undefined },
      }));
    expect(shape(again)).toEqual(shape(result));
  });

  it('keeps canary secrets from the environment out of every resource input', async () => {
    const customerKey = canary('anthropic');
    const token = randomBytes(32).toString('hex');
    const passphrase = canary('other');
    const saved = { ...process.env };
    Object.assign(process.env, {
      ANTHROPIC_API_KEY: customerKey,
      HCLOUD_TOKEN: token,
      PULUMI_CONFIG_PASSPHRASE: passphrase,
    });
    try {
      const whole = await run();
      const everything = JSON.stringify(whole.resources.map((r) => r.inputs)) + JSON.stringify(whole.outputs);
      // The search sees secret inputs in plaintext: the user data is there…
      expect(everything).toContain(JSON.stringify(userData).slice(1, -1));
      // …and the canaries are not.
      for (const c of [customerKey, token, passphrase]) expect(everything).not.toContain(c);
    } finally {
      process.env = saved;
    }
  });

  it('rejects invalid stack config naming the key', () => {
    expect(() => settings({ subdomain: 'Not A Label' })).toThrow(/cortex:subdomain/);
    expect(() => settings({ sshCidrs: ['10.0.0.0/33'] })).toThrow(/cortex:sshCidrs/);
    expect(() => settings({ sshCidrs: [] })).toThrow(/cortex:sshCidrs/);
  });
});

describe('stack config round trip (ops entry point)', () => {
  it('stores every setting as plain config and nothing secret', () => {
    const config = agentStackConfig(settings());
    expect(Object.values(config).every((v) => v.secret === false)).toBe(true);
    expect(Object.keys(config).sort()).toEqual(
      [
        'deploymentId',
        'hostPublicKey',
        'image',
        'location',
        'orgId',
        'pollInterval',
        'serverType',
        'sshCidrs',
        'sshKeyId',
        'subdomain',
        'zone',
      ].map((k) => `cortex:${k}`),
    );
    expect(JSON.stringify(config)).not.toContain('cloud-config');
  });

  it('runs the same program from Pulumi.yaml, user data from the encrypted cortex:userData', async () => {
    const config = { ...agentStackConfig(settings()), 'cortex:userData': { value: userData, secret: true } };
    const r = await runProgramWithMocks(programFor(agentStackName(deploymentId)), {
      project: PULUMI_PROJECT,
      stack: agentStackName(deploymentId),
      config,
      addresses,
    });
    const server = one(r, 'hcloud:index/server:Server');
    expect(isSecretValue(server.inputs.userData)).toBe(true);
    expect((server.inputs.userData as { value: unknown }).value).toBe(userData);
    expect(r.outputs.dnsName?.value).toBe('acme-bot.agents.example.com');
  });

  it('without cortex:userData declares the server without user data', async () => {
    const warn = jest.spyOn(pulumi.log, 'warn').mockResolvedValue();
    try {
      const r = await runProgramWithMocks(programFor(agentStackName(deploymentId)), {
        project: PULUMI_PROJECT,
        stack: agentStackName(deploymentId),
        config: agentStackConfig(settings()),
      });
      expect(one(r, 'hcloud:index/server:Server').inputs.userData).toBeUndefined();
      expect(warn).toHaveBeenCalledWith(expect.stringContaining('cortex:userData'));
    } finally {
      warn.mockRestore();
    }
  });

  it('chooses the program by stack name', () => {
    expect(() => programFor('staging')).toThrow(/neither "platform" nor "agent-<deployment id>"/);
    expect(() => programFor('agent-')).toThrow();
  });
});
