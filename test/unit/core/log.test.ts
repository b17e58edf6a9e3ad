import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import type { HostSpec } from '../../../orchestrator/infra/host-provider';
import { makeLogger } from '../../../orchestrator/log';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { Secret } from '../../../orchestrator/secret';
import { buildUserData, renderUserData } from '../../../templates/cloud-init';
import { echoRuntime } from '../../../templates/runtime-profiles';
import { canary } from '../../support/canary';

const capture = () => {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
};

describe('logging never prints a secret', () => {
  it('redacts a Secret nested in an object, in an array and as a message argument', () => {
    const key = canary('anthropic');
    const out = capture();
    const log = makeLogger({ level: 'info' }, out.stream);
    log.child({ deploymentId: 'd1' }).info(
      {
        job: {
          secrets: [{ envVar: 'ANTHROPIC_API_KEY', value: new Secret(key) }],
          extra: { nested: new Secret(key) },
        },
      },
      'read %s',
      new Secret(key),
    );
    const text = out.text();
    expect(text).toContain('ANTHROPIC_API_KEY');
    expect(text).toContain('[REDACTED]');
    expect(text).not.toContain(key);
  });

  it('censors plain strings at known secret paths (second layer)', () => {
    const key = canary('openai');
    const out = capture();
    const log = makeLogger({ level: 'info' }, out.stream);
    log.info(
      { secret: key, args: { p_value: key }, req: { headers: { authorization: `Bearer ${key}` } } },
      'x',
    );
    expect(out.text()).not.toContain(key);
    expect(out.text()).toContain('[REDACTED]');
  });

  it('prints no host private key for a HostSpec, a job holding one, or user data that lost its wrapper', () => {
    const hostKey = generateHostKeyPair();
    const input = {
      hostname: 'a1',
      siteName: 'a1.agents.example.com',
      hostKey,
      orchestratorPublicKey: generateHostKeyPair().publicKey,
      tls: { mode: 'internal' } as const,
      runtime: echoRuntime(),
      metadataBlock: 'best-effort' as const,
      installPackages: false,
    };
    const doc = buildUserData(input);
    const userData = renderUserData(doc);
    // The canary: a line from the middle of the private key, as it sits in the rendered document.
    const keyLines = hostKey.privateKey.reveal().trim().split('\n');
    const secretLine = keyLines[Math.floor(keyLines.length / 2)] ?? '';
    expect(secretLine.length).toBeGreaterThan(20);
    expect(userData.reveal()).toContain(secretLine);
    const spec: HostSpec = {
      deploymentId: 'd1',
      orgId: 'o1',
      subdomain: 'a1',
      userData,
      hostPublicKey: hostKey.publicKey,
    };
    const out = capture();
    const log = makeLogger({ level: 'info' }, out.stream);
    log.info({ spec }, 'ensuring host');
    log.info(spec, 'ensuring host (spec as the bindings)');
    log.info({ job: { id: 'provision-d1', data: { spec } } }, 'job');
    // Second layer: the same document revealed by mistake, at the paths a HostSpec or job puts it,
    // and the parsed cloud-config itself.
    const plain = userData.reveal();
    log.info({ spec: { ...spec, userData: plain } }, 'x');
    log.info({ job: { data: { spec: { userData: plain } } } }, 'x');
    log.info({ userData: plain }, 'x');
    log.info({ doc }, 'x');
    log.info({ step: { doc } }, 'x');
    const text = out.text();
    expect(text).toContain('"deploymentId":"d1"');
    expect(text).toContain(hostKey.publicKey);
    // Line by line, so a failure names the log line instead of printing a key.
    const leaking = text
      .trim()
      .split('\n')
      .map((l, i) => ({ line: i, leaks: l.includes(secretLine) || l.includes('PRIVATE KEY') }))
      .filter((l) => l.leaks);
    expect(leaking).toEqual([]);
    // The control: the same objects through JSON.stringify without the redaction do leak.
    expect(JSON.stringify({ userData: plain })).toContain(secretLine.replace(/\+/g, '+'));
  });

  it('the Secret wrapper hides its value from every printer but reveal()', () => {
    const key = canary('other');
    const s = new Secret(key);
    expect(String(s)).toBe('[REDACTED]');
    expect(`${s}`).toBe('[REDACTED]');
    expect(JSON.stringify({ s })).toBe('{"s":"[REDACTED]"}');
    expect(inspect({ deep: { s } }, { depth: 10, showHidden: true })).not.toContain(key);
    expect(Object.keys(s)).toEqual([]);
    expect(s.reveal()).toBe(key);
  });
});
