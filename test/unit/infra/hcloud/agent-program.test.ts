import { randomBytes, randomUUID } from 'node:crypto';
import * as pulumi from '@pulumi/pulumi';
import { specialSecretSig, specialSigKey } from '@pulumi/pulumi/runtime/rpc';
import { isOrchestratorError } from '../../../../orchestrator/errors';
import {
  agentSettingsSchema,
  agentStackConfig,
  parseAgentSettings,
  type AgentSettingsInput,
} from '../../../../orchestrator/infra/hcloud/agent-inputs';
import { agentProgram, DNS_TTL } from '../../../../orchestrator/infra/hcloud/agent-program';
import { programFor } from '../../../../orchestrator/infra/hcloud/stack-programs';
import { agentStackName, PULUMI_PROJECT } from '../../../../orchestrator/infra/hcloud/stack-names';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { Secret } from '../../../../orchestrator/secret';
import { canary } from '../../../support/canary';
import {
  runProgramWithMocks,
  type RegisteredResource,
  type ProgramRun,
} from '../../../support/fake-workspace';

const deploymentId = randomUUID();
const orgId = randomUUID();
const addresses = { ipv4: '198.51.100.23', ipv6: '2001:db8:1234::1' };
const hostKeys = generateHostKeyPair();
const hostPublicKey = `${hostKeys.publicKey} host`;
const hostPrivateKey = hostKeys.privateKey.reveal();
/** The private key's base64 lines: each must appear only inside the secret user data. */
const privateKeyLines = hostPrivateKey.split('\n').filter((l) => l !== '' && !l.startsWith('-----'));

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

const userData = `#cloud-config\nssh_keys:\n  ed25519_public: ${hostKeys.publicKey}\n  ed25519_private: |\n${hostPrivateKey
  .split('\n')
  .map((l) => `    ${l}`)
  .join('\n')}\n`;

const run = (
  over: Partial<AgentSettingsInput> = {},
  ud: string | undefined = userData,
): Promise<ProgramRun> =>
  runProgramWithMocks(agentProgram(ud === undefined ? undefined : new Secret(ud)), {
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
    // Constant, deliberately: with only pollInterval set the provider would poll exponentially from
    // it (hcloud.ExponentialBackoff(2, interval): 7, 14, 28, 56 s …), docs/infrastructure.md.
    expect(provider.inputs.pollFunction).toBe('constant');
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

  it('rejects invalid stack config naming the key', () => {
    expect(() => settings({ subdomain: 'Not A Label' })).toThrow(/cortex:subdomain/);
    expect(() => settings({ sshCidrs: ['10.0.0.0/33'] })).toThrow(/cortex:sshCidrs/);
    expect(() => settings({ sshCidrs: [] })).toThrow(/cortex:sshCidrs/);
    // SSH pins only ed25519 keys, checked by the same parser.
    expect(() => settings({ hostPublicKey: hostPublicKey.replace('ssh-ed25519', 'ssh-rsa') })).toThrow(
      /cortex:hostPublicKey: must be an OpenSSH ssh-ed25519 public key/,
    );
  });
});

/**
 * Every path (resource type, then property path; `outputs` for stack outputs) whose string value
 * contains `needle`. Secret inputs are searched in plaintext (`…userData.value`).
 */
const locate = (r: ProgramRun, needle: string): string[] => {
  const found: string[] = [];
  const walk = (v: unknown, path: string): void => {
    if (typeof v === 'string') {
      if (v.includes(needle)) found.push(path);
    } else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
    else if (typeof v === 'object' && v !== null)
      for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
  };
  for (const resource of r.resources) walk(resource, resource.type);
  walk(r.outputs, 'outputs');
  return found;
};

describe('no customer secret reaches a resource input or output', () => {
  const fields = agentSettingsSchema.keyof().options;
  type Field = (typeof fields)[number];
  /**
   * The only inputs that take free text, and the only places a value planted in them may appear.
   * Every other input must refuse a secret-shaped value; a new free-text input fails the test
   * below until it is listed here, with where it goes.
   */
  const MAY_CARRY: Partial<Record<Field, string[]>> = {
    image: ['hcloud:index/server:Server.inputs.image'],
    // An OpenSSH key line may have a comment; the line is exported as the pinned key.
    hostPublicKey: ['outputs.hostPublicKey.value'],
  };
  const planted = (field: Field, secret: string): string =>
    field === 'sshCidrs'
      ? JSON.stringify([secret])
      : field === 'hostPublicKey'
        ? `${hostKeys.publicKey} ${secret}`
        : secret;
  const runWith = (config: ReturnType<typeof agentStackConfig>, registered: RegisteredResource[] = []) =>
    runProgramWithMocks(agentProgram(new Secret(userData)), {
      project: PULUMI_PROJECT,
      stack: agentStackName(deploymentId),
      config,
      addresses,
      registered,
    });

  it('lists only inputs the program has', () => {
    for (const field of Object.keys(MAY_CARRY)) expect(fields).toContain(field);
    // The identity fields name and label resources: they can never carry free text.
    for (const field of ['deploymentId', 'orgId', 'subdomain'])
      expect(Object.keys(MAY_CARRY)).not.toContain(field);
  });

  const refused: [Field, string, string][] = fields
    .filter((f) => !(f in MAY_CARRY))
    .flatMap((f): [Field, string, string][] => [
      [f, 'a provider key', canary('anthropic')],
      // A lowercase hex token passes a hostname-label rule (a subdomain may be one): the ids must
      // be uuids, not merely look like hostnames.
      ...(f === 'deploymentId' || f === 'orgId'
        ? [[f, 'a hex token', randomBytes(16).toString('hex')] as [Field, string, string]]
        : []),
    ]);

  it('sees a resource declared just before a throw (the control: `registered` is not empty by timing)', async () => {
    const registered: RegisteredResource[] = [];
    const err: unknown = await runProgramWithMocks(
      async () => {
        class SshKey extends pulumi.CustomResource {}
        new SshKey('hcloud:index/sshKey:SshKey', 'early', { publicKey: hostPublicKey });
        throw new Error('refused after declaring');
      },
      { project: PULUMI_PROJECT, stack: agentStackName(deploymentId), config: {}, registered },
    ).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as Error).message).toBe('refused after declaring');
    expect(registered.map((r) => [r.type, r.name])).toEqual([['hcloud:index/sshKey:SshKey', 'early']]);
  });

  it.each(refused)(
    'refuses %s = %s with invalid_input before declaring any resource',
    async (field, _kind, secret) => {
      const config = agentStackConfig(settings());
      config[`${PULUMI_PROJECT}:${field}`] = { value: planted(field, secret), secret: false };
      const registered: RegisteredResource[] = [];
      const err: unknown = await runWith(config, registered).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isOrchestratorError(err) && err.code).toBe('invalid_input');
      expect(isOrchestratorError(err) && err.field?.split('.')[0]).toBe(field);
      expect(String(err)).not.toContain(secret);
      expect(registered).toEqual([]);
    },
  );

  it('keeps planted values where they belong, and the env, extra config and the host key out of every resource', async () => {
    const inInputs = Object.fromEntries(Object.keys(MAY_CARRY).map((f) => [f, canary('anthropic')]));
    const config = agentStackConfig(settings());
    for (const [field, secret] of Object.entries(inInputs))
      config[`${PULUMI_PROJECT}:${field}`] = { value: planted(field as Field, secret), secret: false };
    // Config keys the program does not know, plain and secret: a program reading them would leak them.
    const extraConfig = {
      customerApiKey: canary('anthropic'),
      apiKey: canary('openai'),
      secretNote: canary('other'),
    };
    config[`${PULUMI_PROJECT}:customerApiKey`] = { value: extraConfig.customerApiKey, secret: false };
    config[`${PULUMI_PROJECT}:apiKey`] = { value: extraConfig.apiKey, secret: true };
    config[`${PULUMI_PROJECT}:secretNote`] = { value: extraConfig.secretNote, secret: false };
    const env = {
      ANTHROPIC_API_KEY: canary('anthropic'),
      OPENAI_API_KEY: canary('openai'),
      HCLOUD_TOKEN: randomBytes(32).toString('hex'),
      PULUMI_CONFIG_PASSPHRASE: canary('other'),
      SUPABASE_SERVICE_ROLE_KEY: canary('other'),
      CORTEX_ORG_ID: canary('other'),
      ORG_ID: canary('other'),
      LABELS: canary('other'),
    };
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      const whole = await runWith(config);
      for (const [field, secret] of Object.entries(inInputs))
        expect([field, locate(whole, secret)]).toEqual([field, MAY_CARRY[field as Field]]);
      for (const [name, secret] of Object.entries({ ...extraConfig, ...env }))
        expect([name, locate(whole, secret)]).toEqual([name, []]);
      // Labels are exactly the three documented ones, on every resource that has labels.
      const labelled = whole.resources.filter((r) => r.inputs.labels !== undefined);
      expect(labelled.length).toBeGreaterThanOrEqual(4);
      for (const r of labelled)
        expect(r.inputs.labels).toEqual({ 'managed-by': 'cortex', org: orgId, deployment: deploymentId });
      // The host private key only inside the server's user data, marked secret.
      const server = one(whole, 'hcloud:index/server:Server');
      expect(isSecretValue(server.inputs.userData)).toBe(true);
      for (const line of privateKeyLines)
        expect(locate(whole, line)).toEqual(['hcloud:index/server:Server.inputs.userData.value']);
    } finally {
      process.env = saved;
    }
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
