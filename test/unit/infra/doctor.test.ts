import { randomBytes } from 'node:crypto';
import { runCli } from '../../../orchestrator/cli/cortexctl';
import { formatDoctor, runDoctor, type DoctorProbes } from '../../../orchestrator/cli/doctor';

const probes = (have: { pulumi?: string; plugins?: string[] }): DoctorProbes & { dirs: string[] } => {
  const dirs: string[] = [];
  return {
    dirs,
    which: async (cmd) => (cmd === 'pulumi' ? have.pulumi : undefined),
    readDir: async (dir) => {
      dirs.push(dir);
      return have.plugins ?? [];
    },
  };
};

const token = randomBytes(32).toString('hex');
const passphrase = `pass-${randomBytes(8).toString('hex')}`;
const complete = {
  pulumi: '/usr/local/bin/pulumi',
  plugins: ['resource-hcloud-v1.41.0', 'resource-hcloud-v1.41.0.lock'],
};

const cli = async (env: Record<string, string>, have: Parameters<typeof probes>[0]) => {
  let text = '';
  const code = await runCli(['doctor'], {
    env: { PULUMI_HOME: '/srv/pulumi', ...env },
    out: (t) => void (text += t),
    probes: probes(have),
  });
  return { code, text };
};

describe('cortexctl doctor', () => {
  it('passes when the CLI, the matching plugin, a token and a passphrase are present, printing no value', async () => {
    const { code, text } = await cli({ HCLOUD_TOKEN: token, PULUMI_CONFIG_PASSPHRASE: passphrase }, complete);
    expect(code).toBe(0);
    expect(text).toContain('ok       Pulumi CLI: found at /usr/local/bin/pulumi');
    expect(text).toContain('v1.41.0 installed in /srv/pulumi/plugins');
    expect(text).not.toContain('MISSING');
    expect(text).not.toContain(token);
    expect(text).not.toContain(passphrase);
  });

  it('says what is missing in plain words and exits non-zero', async () => {
    const { code, text } = await cli({}, {});
    expect(code).toBe(1);
    expect(text).toContain('MISSING  Pulumi CLI: the `pulumi` command is not on PATH');
    expect(text).toContain('MISSING  hcloud plugin: no hcloud resource plugin in /srv/pulumi/plugins');
    expect(text).toContain('pulumi plugin install resource hcloud v1.41.0');
    expect(text).toContain('MISSING  Hetzner token: HCLOUD_TOKEN is not set');
    expect(text).toContain('4 things are missing');
  });

  it('flags each missing piece on its own', async () => {
    const base = { HCLOUD_TOKEN: token, PULUMI_CONFIG_PASSPHRASE: passphrase };
    expect((await cli(base, { ...complete, pulumi: undefined })).code).toBe(1);
    expect((await cli({ PULUMI_CONFIG_PASSPHRASE: passphrase }, complete)).code).toBe(1);
    const wrong = await cli(base, { ...complete, plugins: ['resource-hcloud-v1.40.0'] });
    expect(wrong.code).toBe(1);
    expect(wrong.text).toContain('found v1.40.0 in /srv/pulumi/plugins, but @pulumi/hcloud needs v1.41.0');
    const noPassphrase = await cli({ HCLOUD_TOKEN: token }, complete);
    expect(noPassphrase.text).toContain('MISSING  stack secrets');
    expect(
      (await cli({ HCLOUD_TOKEN: token, PULUMI_BACKEND_URL: 'https://api.pulumi.com' }, complete)).code,
    ).toBe(0);
  });

  it('shows the backend without credentials or query', async () => {
    const checks = await runDoctor(
      {
        config: {
          HCLOUD_TOKEN: token,
          PULUMI_CONFIG_PASSPHRASE: passphrase,
          PULUMI_BACKEND_URL: 's3://user:pw@state-bucket/cortex?region=eu-central-1&awssdk=v2',
          PULUMI_SECRETS_PROVIDER: undefined,
          CORTEX_STATE_DIR: '.local',
        },
        pulumiHome: '/root/.pulumi',
        hcloudVersion: '1.41.0',
      },
      probes(complete),
    );
    const text = formatDoctor(checks);
    expect(text).toContain('s3://state-bucket/cortex');
    expect(text).not.toMatch(/pw|region=/);
  });

  it('reports an invalid configuration by variable name, and unknown commands with usage', async () => {
    const bad = await cli({ HCLOUD_TOKEN: 'short-token' }, complete);
    expect(bad.code).toBe(2);
    expect(bad.text).toContain('HCLOUD_TOKEN');
    expect(bad.text).not.toContain('short-token');
    let text = '';
    expect(await runCli(['frobnicate'], { env: {}, out: (t) => void (text += t) })).toBe(2);
    expect(text).toContain('unknown command "frobnicate"');
    expect(text).toContain('doctor');
  });
});
