import YAML from 'yaml';
import type { OrchestratorError } from '../../../orchestrator/errors';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { Secret } from '../../../orchestrator/secret';
import { CADDYFILE_PATH } from '../../../templates/caddyfile';
import {
  BASE_PACKAGES,
  METADATA_BLOCK_UNIT,
  agentServerFiles,
  buildUserData,
  renderUserData,
  type UserDataInput,
} from '../../../templates/cloud-init';
import { echoRuntime, type RuntimeProfile } from '../../../templates/runtime-profiles';

/**
 * What keeps the cloud-init user data from carrying a secret or an injected line: the input checks
 * at their exact boundaries, with their exact messages and fields, and the document's exact shape.
 * No external tool (cloud-init's own schema check runs in cloud-init.test.ts): written for mutation
 * testing, which runs these on every mutant.
 */
const pair = generateHostKeyPair();
const orchestratorKey = generateHostKeyPair().publicKey;
const input = (over: Partial<Record<keyof UserDataInput, unknown>> = {}): UserDataInput =>
  ({
    hostname: 'a1b2',
    siteName: 'a1b2.agents.example.com',
    hostKey: pair,
    orchestratorPublicKey: orchestratorKey,
    tls: { mode: 'internal' },
    runtime: echoRuntime(18001),
    metadataBlock: 'required',
    installPackages: false,
    ...over,
  }) as UserDataInput;
const runtime = (over: Partial<Record<keyof RuntimeProfile, unknown>>): RuntimeProfile =>
  ({ ...echoRuntime(18001), ...over }) as RuntimeProfile;

const refusal = (fn: () => unknown): Pick<OrchestratorError, 'code' | 'field' | 'message'> | 'accepted' => {
  try {
    fn();
  } catch (err) {
    const e = err as OrchestratorError;
    return { code: e.code, field: e.field, message: e.message };
  }
  return 'accepted';
};
const invalid = (field: string, message: string) => ({
  code: 'invalid_input',
  field,
  message: `${field}: ${message}`,
});
const build = (over: Partial<Record<keyof UserDataInput, unknown>>) =>
  refusal(() => buildUserData(input(over)));

describe('buildUserData input checks', () => {
  it('takes every accepted field, and refuses any other by name', () => {
    expect(build({ httpsPort: 8443, installPackages: true, metadataBlock: 'best-effort' })).toBe('accepted');
    for (const k of ['env', 'secrets', 'value', 'hostKeys', ''])
      expect(build({ [k]: 'x' } as Record<string, unknown>)).toEqual(
        invalid(k, 'is not accepted in user data (it must never carry a secret)'),
      );
  });

  it('refuses a Secret anywhere but the host key, naming its field exactly', () => {
    const s = new Secret(`sk-${'x'.repeat(30)}`);
    const notSecret = 'must not be a Secret: user data is readable through the metadata service';
    expect(build({ siteName: s })).toEqual(invalid('siteName', notSecret));
    expect(build({ tls: { mode: 'acme', email: s } })).toEqual(invalid('tls.email', notSecret));
    expect(build({ runtime: runtime({ execStart: ['/usr/bin/python3', s] }) })).toEqual(
      invalid('runtime.execStart[1]', notSecret),
    );
    expect(build({ runtime: runtime({ files: [{ path: '/a', content: s, permissions: '0644' }] }) })).toEqual(
      invalid('runtime.files[0].content', notSecret),
    );
    expect(build({ hostKey: { ...pair, publicKey: s } })).toEqual(invalid('hostKey.publicKey', notSecret));
    // the host key's private half is the one Secret it carries, and it must be one
    const mustBe = invalid('hostKey.privateKey', 'must be a Secret (from generateHostKeyPair)');
    expect(build({ hostKey: { ...pair, privateKey: pair.privateKey.reveal() } })).toEqual(mustBe);
    expect(build({ hostKey: undefined })).toEqual(mustBe);
  });

  it('follows nesting 8 levels deep and refuses a ninth, so a cycle cannot hang it', () => {
    const nest = (n: number): Record<string, unknown> => (n === 0 ? { leaf: 'v' } : { a: nest(n - 1) });
    // the input is depth 0, tls depth 1: tls.a x 7 is an object at depth 8, tls.a x 8 one at depth 9
    expect(build({ tls: { mode: 'internal', ...nest(7) } })).toBe('accepted');
    expect(build({ tls: { mode: 'internal', ...nest(8) } })).toEqual(
      invalid(`tls${'.a'.repeat(8)}`, 'is nested too deeply'),
    );
    // null, numbers and booleans are leaves
    expect(build({ tls: { mode: 'internal', a: null, b: 1, c: false } })).toBe('accepted');
    // arrays count as a level too
    const loop: unknown[] = [];
    loop.push(loop);
    expect(build({ tls: { mode: 'internal', a: loop } })).toEqual(
      invalid(`tls.a${'[0]'.repeat(7)}`, 'is nested too deeply'),
    );
    const cycle: Record<string, unknown> = { mode: 'internal' };
    cycle.self = cycle;
    expect(build({ tls: cycle })).toEqual(invalid(`tls${'.self'.repeat(8)}`, 'is nested too deeply'));
  });

  it('the host name is one DNS label of 1 to 63 characters', () => {
    for (const hostname of ['a', '0', `a${'b'.repeat(61)}c`, 'a-1'])
      expect([hostname, build({ hostname })]).toEqual([hostname, 'accepted']);
    for (const hostname of [`a${'b'.repeat(62)}c`, '-a', 'a-', 'A1', 'a.b', 'a b', 'a\n', ''])
      expect([hostname, build({ hostname })]).toEqual([
        hostname,
        invalid('hostname', 'must be a DNS label (a-z, 0-9, -)'),
      ]);
  });

  it('the orchestrator key is one OpenSSH key line: no options, no comment, at most two padding characters', () => {
    const [type, body] = orchestratorKey.split(' ') as [string, string];
    for (const k of [
      ` ${type} ${body}\n`,
      `ecdsa-sha2-nistp256 ${body}`,
      `ssh-rsa ${body}`,
      `ssh-ed25519 AAAA==`,
    ])
      expect([k, build({ orchestratorPublicKey: k })]).toEqual([k, 'accepted']);
    for (const k of [
      `${type} ${body} root@host`,
      `command="sh" ${type} ${body}`,
      `${type}  ${body}`,
      `ssh-dss ${body}`,
      `${type} AAAA===`,
      `${type} AA-A`,
      `x${type} ${body}`,
      `${type} ${body}\n${type} ${body}`,
      '',
    ])
      expect([k, build({ orchestratorPublicKey: k })]).toEqual([
        k,
        invalid('orchestratorPublicKey', 'must be one OpenSSH public key line without options or comment'),
      ]);
    expect(build({ hostKey: { ...pair, publicKey: 'ssh-ed25519 x' } })).toMatchObject({
      code: 'invalid_input',
      field: 'hostKey.publicKey',
    });
  });

  it('runtime packages are Debian package names of 2 to 63 characters', () => {
    for (const p of ['ab', '0a', `a${'b'.repeat(62)}`, 'g++', 'libc6.1-dev'])
      expect([p, build({ runtime: runtime({ packages: ['python3', p] }) })]).toEqual([p, 'accepted']);
    for (const p of ['a', `a${'b'.repeat(63)}`, 'Ab', '-ab', '+ab', 'a b', 'a;b', 'ab\n'])
      expect([p, build({ runtime: runtime({ packages: ['python3', p] }) })]).toEqual([
        p,
        invalid('runtime.packages[1]', 'must be a Debian package name'),
      ]);
  });
});

describe('agentServerFiles input checks', () => {
  const files = (over: Partial<Record<keyof UserDataInput, unknown>>) =>
    refusal(() => agentServerFiles(input(over)));
  const file = (f: Record<string, unknown>) =>
    files({ runtime: runtime({ files: [{ path: '/a', content: '', permissions: '0644' }, f] }) });

  it('the metadata block is required or best-effort, and sets the block unit flag', () => {
    expect(files({ metadataBlock: 'off' })).toEqual(
      invalid('metadataBlock', 'must be required or best-effort'),
    );
    const unit = (metadataBlock: string) =>
      agentServerFiles(input({ metadataBlock })).find(
        (f) => f.path === `/etc/systemd/system/${METADATA_BLOCK_UNIT}`,
      )?.content ?? '';
    expect(unit('required').split('\n')).toContain(
      'ExecStart=/usr/local/sbin/cortex-block-metadata --required',
    );
    expect(unit('best-effort').split('\n')).toContain('ExecStart=/usr/local/sbin/cortex-block-metadata');
  });

  it('a runtime file: a plain absolute path of at most 200 characters, 0644 or 0755, text', () => {
    for (const path of ['/a/b.c', `/${'a'.repeat(200)}`, '/a/..b', '/a/b..'])
      expect([path, file({ path, content: 'x', permissions: '0755' })]).toEqual([path, 'accepted']);
    for (const path of ['a/b', `/${'a'.repeat(201)}`, '/a/../b', '/..', '/a b', '/a\n', '/$a', ''])
      expect([path, file({ path, content: 'x', permissions: '0644' })]).toEqual([
        path,
        invalid('runtime.files[1].path', 'must be a plain absolute path'),
      ]);
    for (const permissions of ['0600', '0777', '644', 420])
      expect(file({ path: '/b', content: 'x', permissions })).toEqual(
        invalid('runtime.files[1].permissions', 'must be 0644 or 0755'),
      );
    for (const content of [undefined, 1, Buffer.from('x')])
      expect(file({ path: '/b', content, permissions: '0644' })).toEqual(
        invalid('runtime.files[1].content', 'must be text'),
      );
  });

  it('the runtime port is a whole number 1 to 65533', () => {
    const portRefused = invalid(
      'runtime.port',
      'must be a port number 1-65533 (the slots listen on the next two)',
    );
    for (const port of [1, 65533])
      expect(files({ runtime: runtime({ port, execStart: ['/usr/bin/python3', `--port=${port}`] }) })).toBe(
        'accepted',
      );
    for (const port of [0, 65534, 1.5, '18001', Number.NaN])
      expect([port, files({ runtime: runtime({ port }) })]).toEqual([port, portRefused]);
  });

  it('places exactly these files, each with its mode', () => {
    expect(agentServerFiles(input()).map((f) => [f.path, f.permissions])).toEqual([
      ['/etc/ssh/sshd_config.d/10-cortex.conf', '0644'],
      ['/usr/local/sbin/cortex-block-metadata', '0755'],
      ['/etc/systemd/system/cortex-metadata-block.service', '0644'],
      ['/usr/local/lib/cortex/echo-agent.py', '0755'],
      ['/usr/local/lib/cortex/reserved-env-names.json', '0644'],
      ['/etc/systemd/system/cortex-agent@.service', '0644'],
      ['/usr/local/lib/cortex/slot-blue.env', '0644'],
      ['/usr/local/lib/cortex/slot-green.env', '0644'],
      ['/usr/local/sbin/cortex-upstream', '0755'],
      ['/etc/systemd/system/cortex-upstream.service', '0644'],
      ['/etc/caddy/Caddyfile', '0644'],
    ]);
  });

  it('writes each slot port file, the upstream unit with the service port, and the Caddyfile with the HTTPS port', () => {
    const byPath = new Map(agentServerFiles(input({ httpsPort: 8443 })).map((f) => [f.path, f]));
    expect(byPath.get('/usr/local/lib/cortex/slot-blue.env')).toEqual({
      path: '/usr/local/lib/cortex/slot-blue.env',
      content:
        "# Written by the cortex orchestrator: slot blue's port (no secret).\nCORTEX_AGENT_PORT=18002\n",
      permissions: '0644',
    });
    expect(byPath.get('/usr/local/lib/cortex/slot-green.env')?.content).toBe(
      "# Written by the cortex orchestrator: slot green's port (no secret).\nCORTEX_AGENT_PORT=18003\n",
    );
    expect(byPath.get('/etc/systemd/system/cortex-upstream.service')?.content).toContain('18001');
    expect(byPath.get(CADDYFILE_PATH)?.content.split('\n')).toContain('\thttps_port 8443');
    expect(byPath.get(CADDYFILE_PATH)?.permissions).toBe('0644');
    const noPort = agentServerFiles(input()).find((f) => f.path === CADDYFILE_PATH)?.content ?? '';
    expect(noPort).not.toContain('https_port');
    expect(noPort).toContain('a1b2.agents.example.com {');
  });
});

describe('the user data document', () => {
  it('has exactly this shape: pinned host key, no password, root only, argv commands', () => {
    const doc = buildUserData(input({ runtime: runtime({ installCommands: [['/bin/true', 'x']] }) }));
    const { write_files: written, ...rest } = doc as { write_files: Record<string, unknown>[] };
    expect(rest).toEqual({
      hostname: 'a1b2',
      ssh_deletekeys: true,
      ssh_keys: { ed25519_private: pair.privateKey.reveal(), ed25519_public: pair.publicKey },
      ssh_pwauth: false,
      disable_root: false,
      users: [{ name: 'root', lock_passwd: true }],
      ssh_authorized_keys: [orchestratorKey],
      runcmd: [
        ['systemctl', 'daemon-reload'],
        ['systemctl', 'enable', '--now', METADATA_BLOCK_UNIT],
        ['systemctl', 'enable', '--now', 'cortex-upstream.service'],
        ['install', '-d', '-m', '0700', '-o', 'root', '-g', 'root', '/etc/cortex'],
        ['/bin/true', 'x'],
        ['systemctl', 'try-reload-or-restart', 'ssh.service'],
      ],
    });
    for (const f of written) {
      expect(f.owner).toBe('root:root');
      expect('defer' in f).toBe(f.path === CADDYFILE_PATH);
    }
    expect(written.find((f) => f.path === CADDYFILE_PATH)?.defer).toBe(true);
  });

  it('installs the base and runtime packages once each, only when asked', () => {
    const doc = buildUserData(
      input({ installPackages: true, runtime: runtime({ packages: ['python3', 'caddy', 'python3'] }) }),
    );
    expect(doc.package_update).toBe(true);
    expect(doc.packages).toEqual([...BASE_PACKAGES, 'python3']);
    const off = buildUserData(input({ installPackages: false }));
    expect('packages' in off || 'package_update' in off).toBe(false);
  });

  it('is rendered as #cloud-config YAML with long lines whole and multi-line text as literal blocks', () => {
    const long = `# ${'x'.repeat(300)}`;
    const doc = buildUserData(
      input({
        runtime: runtime({ files: [{ path: '/a', content: `${long}\nline two\n`, permissions: '0644' }] }),
      }),
    );
    const text = renderUserData(doc).reveal();
    expect(text.startsWith('#cloud-config\nhostname: a1b2\n')).toBe(true);
    expect(text.split('\n')).toContain(`      ${long}`);
    expect(text).toMatch(/ {4}content: \|\n {6}# x{300}\n {6}line two\n/);
    expect(YAML.parse(text)).toEqual(JSON.parse(JSON.stringify(doc)));
    // a long one-line value stays on one line (no folding at 80 columns)
    const words = Array.from({ length: 60 }, () => 'word').join(' ');
    const one = renderUserData(
      buildUserData(
        input({ runtime: runtime({ files: [{ path: '/a', content: words, permissions: '0644' }] }) }),
      ),
    ).reveal();
    expect(one.split('\n')).toContain(`    content: ${words}`);
  });
});
