import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { agentCommands, type Argv } from '../../../orchestrator/remote/agent-commands';
import { ENV_FILE_PATH } from '../../../orchestrator/remote/env-file';
import { rekeyCommands } from '../../../orchestrator/remote/rekey';
import { swapCommands } from '../../../orchestrator/remote/swap-commands';

/**
 * The env file stays write-only for the orchestrator (README, DESIGN invariant 4): a static check
 * over every source file in orchestrator/ that no command it builds reads a file back, whatever
 * the reader (cat, head, dd, base64, python3, …), except the few reviewed ones below, each shown
 * unable to reach the env file; and that nothing reads a remote file over SFTP.
 */
const root = join(__dirname, '../../..');
const sources = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );

// Programs that can print, copy or interpret a file's content.
const READERS = [
  'cat',
  'tac',
  'head',
  'tail',
  'less',
  'more',
  'nl',
  'cut',
  'paste',
  'sort',
  'uniq',
  'grep',
  'egrep',
  'fgrep',
  'rg',
  'awk',
  'gawk',
  'mawk',
  'sed',
  'dd',
  'cp',
  'install',
  'rsync',
  'scp',
  'tee',
  'base64',
  'base32',
  'xxd',
  'od',
  'hexdump',
  'strings',
  'diff',
  'cmp',
  'md5sum',
  'sha1sum',
  'sha256sum',
  'openssl',
  'gzip',
  'tar',
  'zip',
  'xargs',
  'env',
  'source',
  '.',
  'sh',
  'bash',
  'dash',
  'python',
  'python3',
  'perl',
  'ruby',
  'node',
  'busybox',
  'vi',
  'vim',
  'nano',
  'systemd-run',
  'journalctl',
  'curl',
  'wget',
];
const ARGV_START = new RegExp(
  String.raw`\[\s*(['"\x60])(${READERS.map((r) => r.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})\1`,
  'g',
);

/** `file: program` for every argv literal in `text` that starts with a reader. */
const readersIn = (file: string, text: string): string[] =>
  [...text.matchAll(ARGV_START)].map((m) => `${file}: ${m[2]}`);

const scan = (dir: string): string[] =>
  sources(join(root, dir)).flatMap((f) => readersIn(relative(root, f), readFileSync(f, 'utf8')));

describe('the env file stays write-only', () => {
  it('the scan finds a reader where there is one (control: the test-only probes read files)', () => {
    expect(scan('test/support')).toContain('test/support/agent-probes.ts: cat');
    expect(readersIn('x.ts', "const a = [\n  'dd', 'if=/etc/cortex/agent.env'];")).toEqual(['x.ts: dd']);
  });

  it('orchestrator/ builds no reader but the reviewed ones', () => {
    // Each reviewed reader, and why it cannot reach the env file (shown in the next test):
    const reviewed = new Set([
      // processCmdline (a pid's /proc/<pid>/cmdline) and caddyRootCertificate (one path shape)
      'orchestrator/remote/agent-commands.ts: cat',
      // environDigests: HMACs of /proc/<pid>/environ under a one-time key, never a value
      'orchestrator/remote/agent-commands.ts: python3',
      // caddyAdminProbe: a fixed URL over a unix socket (connecting to a file reads nothing)
      'orchestrator/remote/agent-commands.ts: curl',
      // fileDigests: digests of non-secret files; refuses the env file's directory
      'orchestrator/remote/agent-commands.ts: sha256sum',
      // the demo's health check: runs on this machine, an https URL, a local CA file
      'orchestrator/dns/curl-command.ts: curl',
      // rekeyCommands.readPublic: the new host key's public half
      'orchestrator/remote/rekey.ts: cat',
      // `install -d` of the env file's directory
      'orchestrator/steps/provision-steps.ts: install',
      // swapCommands.activeSlot: one fixed path (the active-slot record), no argument
      'orchestrator/remote/swap-commands.ts: cat',
      // swapCommands.httpsProbeThroughCaddy / httpProbeLoopback: URLs only, body discarded; the
      // one file named is Caddy's local CA root (a fixed path)
      'orchestrator/remote/swap-commands.ts: curl',
      // the swap's host helper (swap-host-script.ts): its modes take a slot unit, a port, a URL
      // path or a slot, never a file path; it opens /proc/<pid>/environ only to HMAC it under a
      // one-time key, and /proc/<pid>/cgroup; a batch runs only the swap's own commands
      'orchestrator/remote/swap-commands.ts: python3',
    ]);
    const found = scan('orchestrator');
    expect(found.filter((r) => !reviewed.has(r))).toEqual([]);
    // and the scan does see orchestrator's own readers
    expect(found).toEqual(
      expect.arrayContaining([
        'orchestrator/remote/agent-commands.ts: cat',
        'orchestrator/remote/rekey.ts: cat',
      ]),
    );
  });

  it('none of the reviewed readers can be pointed at the env file', () => {
    expect(() => agentCommands.caddyRootCertificate(ENV_FILE_PATH)).toThrow(/path/);
    const rekey = rekeyCommands(ENV_FILE_PATH);
    expect(rekey.readPublic).toEqual(['cat', '--', `${ENV_FILE_PATH}.rekey.pub`]);
    expect(agentCommands.processCmdline(4321)).toEqual(['cat', '/proc/4321/cmdline']);
    const digests = agentCommands.environDigests(4321);
    expect(digests.slice(0, 3)).toEqual(['python3', '-I', '-c']);
    expect(digests.join(' ')).not.toContain('agent.env');
    expect(digests.join(' ')).toContain('hmac.new(key, v, hashlib.sha256).hexdigest()');
    const install = readFileSync(join(root, 'orchestrator/steps/provision-steps.ts'), 'utf8').match(
      /\[\s*'install'[^\]]*\]/g,
    );
    expect(install).toEqual(["['install', '-d', '-m', '0700', '-o', 'root', '-g', 'root', '/etc/cortex']"]);
  });

  it('fileDigests refuses every spelling of a path in the env file directory', () => {
    const digests = (agentCommands as unknown as Record<string, (p: string[]) => Argv>).fileDigests;
    for (const p of [
      ENV_FILE_PATH,
      '/etc//cortex/agent.env',
      '/etc/./cortex/agent.env',
      '//etc/cortex/agent.env',
    ])
      expect(() => digests!([p])).toThrow(/write-only/);
  });

  it('every command builder given the env file path names it only to stat, list or remove it', () => {
    const uses: string[] = [];
    for (const [name, build] of Object.entries(agentCommands)) {
      let argv: Argv;
      try {
        argv = (build as (p: unknown) => Argv)(ENV_FILE_PATH);
      } catch {
        continue; // takes a unit name, a pid, a list or a fixed path shape
      }
      const at = argv.indexOf(ENV_FILE_PATH);
      if (at < 0) continue;
      // curl may name it only as the unix socket to connect to, which reads no file
      if (argv[0] === 'curl' && argv[at - 1] === '--unix-socket') continue;
      uses.push(`${name}: ${argv[0] ?? ''}`);
    }
    expect(uses.sort()).toEqual(['listDir: ls', 'removeFile: rm', 'stat: stat']);
  });

  it("the swap's commands cannot be pointed at an env file's content", () => {
    expect(swapCommands.activeSlot()).toEqual(['cat', '--', '/etc/cortex/active-slot']);
    expect(swapCommands.activeSlot.length).toBe(0);
    const probe = swapCommands.httpsProbeThroughCaddy({
      siteName: 'a.agents.example.com',
      httpsPort: 443,
      path: '/health',
      localCa: true,
    });
    expect(probe).toEqual(expect.arrayContaining(['--output', '/dev/null', '--cacert']));
    expect(probe[probe.indexOf('--cacert') + 1]).toBe(
      '/var/lib/caddy/storage/pki/authorities/local/root.crt',
    );
    expect(probe.join(' ')).not.toMatch(/cortex\/agent|file:|@/);
    expect(() =>
      swapCommands.httpsProbeThroughCaddy({
        siteName: 'a.example.com',
        httpsPort: 443,
        path: ENV_FILE_PATH,
        localCa: false,
      }),
    ).not.toThrow(); // a URL path, not a file: curl fetches https://a.example.com/etc/cortex/…
    expect(() => swapCommands.httpProbeLoopback(18789, 'file:///etc/cortex/agent-blue.env')).toThrow(/path/);
    expect(swapCommands.httpProbeLoopback(18789, '/health')).toEqual(expect.arrayContaining(['/dev/null']));
    // The env file is only linked or renamed within /etc/cortex, never copied elsewhere.
    expect(() => swapCommands.linkEnvFile(ENV_FILE_PATH, '/tmp/x')).toThrow(/path/);
    expect(() => swapCommands.moveEnvFile(ENV_FILE_PATH, '/var/www/x.env')).toThrow(/path/);
    expect(swapCommands.linkEnvFile(ENV_FILE_PATH, `${ENV_FILE_PATH}.previous`)[0]).toBe('ln');
  });

  it("the swap's host helper reads no file it is told, and a batch runs no reader", () => {
    const script = swapCommands.portHolders(1)[3] as string;
    // every open() in the helper: the remembered health answer per slot (a new temp file, then the
    // file itself read, its name fixed but for the slot: HEALTHY_AT + blue|green from the unit
    // pattern; review R19 finding 4), the two /proc files by pid, the kernel's TCP tables (by a
    // fixed name, below), a new temp file, the record's directory (to fsync it), the batch lock
    // (write-only)
    expect(script).toContain('for name in ("/proc/net/tcp", "/proc/net/tcp6"):');
    expect(script).toContain('HEALTHY_AT = "/run/cortex-swap.healthy-"');
    expect(script).toContain('return HEALTHY_AT + m.group(1) if m else None');
    expect(script).toContain('UNIT = re.compile(r"cortex-agent@(blue|green)\\.service")');
    expect([...script.matchAll(/\bopen\(([^,)]*)/g)].map((m) => m[1])).toEqual([
      'tmp',
      'path',
      '"/proc/%d/environ" % pid',
      'name',
      '"/proc/%d/cgroup" % pid',
      'tmp',
      'ENV_DIR',
      'LOCK',
    ]);
    expect(script).toContain('LOCK = "/run/cortex-swap.lock"');
    expect(script).not.toMatch(/\b(exec|eval|os\.system|shell=True)\b/);
    expect(script).toContain('hmac.new(key, v, hashlib.sha256).hexdigest()');
    for (const bad of [ENV_FILE_PATH, '/etc/cortex/agent-blue.env', '../agent-blue.env'])
      expect(() => swapCommands.unitDigests(bad)).toThrow(/unit/);
    expect(() =>
      swapCommands.waitHealthyLoopback('cortex-agent@blue.service', 1, ENV_FILE_PATH, 1),
    ).not.toThrow(); // a URL path
    expect(() =>
      swapCommands.waitHealthyLoopback(
        'cortex-agent@blue.service',
        1,
        'file:///etc/cortex/agent-blue.env',
        1,
      ),
    ).toThrow(/path/);
    for (const reader of [
      ['cat', '--', ENV_FILE_PATH],
      ['python3', '-c', 'x'],
      ['sh', '-c', 'x'],
      ['cp', ENV_FILE_PATH, '/tmp/x'],
    ])
      expect(() => swapCommands.batch([{ argv: reader }])).toThrow(/steps\[0\]/);
  });

  it('nothing in orchestrator/ reads a remote file over SFTP', () => {
    // ssh2's SFTP readers; the atomic writer's SftpOps type picks none of them.
    const found = sources(join(root, 'orchestrator')).filter((f) =>
      /\b(fastGet|createReadStream)\b|\bsftp\??\.(read|readFile)\s*\(/.test(readFileSync(f, 'utf8')),
    );
    expect(found.map((f) => relative(root, f))).toEqual([]);
  });
});
