import { spawnSync } from 'node:child_process';
import {
  agentCommands,
  CADDY_STOCK_ADMIN_PORT,
  parseListeners,
  parseMainPid,
  type Argv,
} from '../../../orchestrator/remote/agent-commands';
import { quoteArgv } from '../../../orchestrator/remote/shell-quote';
import { agentProbes, parseEnviron } from '../../support/agent-probes';
import { HOSTILE_VALUES } from '../../support/hostile-values';

/**
 * What a remote POSIX shell makes of the quoted command line: `printf '%s\0'` in front of it
 * prints every word the shell parsed, NUL-terminated, so the argv the program would receive is
 * compared byte for byte.
 */
const wordsAfterSh = (argv: Argv): Buffer[] => {
  const r = spawnSync('/bin/sh', ['-c', `printf '%s\\0' ${quoteArgv(argv)}`]);
  if (r.status !== 0) throw new Error(`sh failed: ${r.stderr.toString()}`);
  const out = r.stdout;
  const words: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < out.length; i++)
    if (out[i] === 0) {
      words.push(out.subarray(start, i));
      start = i + 1;
    }
  return words;
};

describe('agent commands as data', () => {
  it('checks where the Caddy admin API listens: a TCP listener probe and the socket', () => {
    expect(CADDY_STOCK_ADMIN_PORT).toBe(2019);
    expect(agentCommands.tcpListeners(CADDY_STOCK_ADMIN_PORT)).toEqual([
      'ss',
      '-H',
      '-l',
      '-t',
      '-n',
      'sport = :2019',
    ]);
    for (const bad of [0, 65536, 1.5, NaN]) expect(() => agentCommands.tcpListeners(bad)).toThrow(/port/);
    expect(agentCommands.caddyAdminProbe()).toEqual([
      'curl',
      '--silent',
      '--show-error',
      '--fail',
      '--max-time',
      '5',
      '--header',
      'Host;',
      '--unix-socket',
      '/var/lib/caddy/admin.sock',
      'http://localhost/config/',
    ]);
    // ss -H output as seen on a local host with Caddy's stock config, and with nothing listening.
    expect(
      parseListeners(
        'LISTEN 0      4096   127.0.0.1:2019 0.0.0.0:*\nLISTEN 0      4096   [::1]:2019 [::]:*\n',
      ),
    ).toEqual(['127.0.0.1:2019', '[::1]:2019']);
    expect(parseListeners('')).toEqual([]);
    expect(parseListeners('\n')).toEqual([]);
  });

  it('builds systemctl argv for a unit', () => {
    expect(agentCommands.restart('cortex-agent.service')).toEqual([
      'systemctl',
      'restart',
      'cortex-agent.service',
    ]);
    expect(agentCommands.mainPid('cortex-agent.service')).toEqual([
      'systemctl',
      'show',
      '--property=MainPID',
      '--value',
      'cortex-agent.service',
    ]);
    expect(agentCommands.isActive('caddy.service')).toEqual([
      'systemctl',
      'is-active',
      '--quiet',
      'caddy.service',
    ]);
  });

  it.each(['cortex-agent', 'x.service; reboot', '../x.service', ''])('rejects the unit name %j', (u) => {
    expect(() => agentCommands.restart(u)).toThrow(/unit/);
  });

  it('reads a process command line only for a real pid', () => {
    expect(agentCommands.processCmdline(1234)).toEqual(['cat', '/proc/1234/cmdline']);
    expect(() => agentCommands.processCmdline(-1)).toThrow(/pid/);
    expect(() => agentCommands.processCmdline(1)).toThrow(/pid/);
    expect(() => agentCommands.processCmdline(1.5)).toThrow(/pid/);
  });

  it('has no builder that reads a file or a process environment back (the env file stays write-only)', () => {
    expect(Object.keys(agentCommands)).not.toContain('readFile');
    expect(Object.keys(agentCommands)).not.toContain('processEnviron');
    // No builder with a path argument produces a reader of the file's content.
    const path = '/etc/cortex/agent.env';
    for (const [name, build] of Object.entries(agentCommands)) {
      if (build.length !== 1) continue;
      let argv: Argv;
      try {
        argv = (build as (p: string) => Argv)(path);
      } catch {
        continue; // a unit builder: the path is not a unit name
      }
      expect({ name, program: argv[0] }).not.toEqual({ name, program: 'cat' });
    }
  });

  it('guards file paths and ends options before them', () => {
    expect(agentCommands.stat('/etc/cortex/agent.env')).toEqual([
      'stat',
      '--format=%u %g %a %F',
      '--',
      '/etc/cortex/agent.env',
    ]);
    expect(() => agentCommands.stat('etc/x')).toThrow(/path/);
    expect(() => agentCommands.listDir('')).toThrow(/path/);
    expect(() => agentCommands.removeFile('/etc/cortex/../shadow')).toThrow(/path/);
  });

  it('every builder output reaches the remote program byte for byte through /bin/sh', () => {
    const awkward = `/srv/${Object.values(HOSTILE_VALUES).join('|').replace(/\//g, '_')}`;
    const outputs: Argv[] = [
      agentCommands.cloudInitWait(),
      agentCommands.daemonReload(),
      agentCommands.restart('cortex-agent.service'),
      agentCommands.reloadOrRestart('caddy.service'),
      agentCommands.isActive('caddy.service'),
      agentCommands.mainPid('cortex-agent.service'),
      agentCommands.enable('user@0.service'),
      agentCommands.processCmdline(4321),
      agentCommands.stat(awkward),
      agentCommands.listDir('/etc/cortex'),
      agentCommands.removeFile(`${awkward}\n-rf *`),
    ];
    for (const argv of outputs)
      expect(wordsAfterSh(argv).map((w) => w.toString('hex'))).toEqual(
        argv.map((a) => Buffer.from(a, 'utf8').toString('hex')),
      );
  });

  it('the round trip is sharp: an unquoted argv does not survive /bin/sh', () => {
    // printf with the words joined by spaces, unquoted: the shell splits, expands and strips.
    const argv = ['stat', '--', '/a b/$HOME'];
    const r = spawnSync('/bin/sh', ['-c', `printf '%s\\0' ${argv.join(' ')}`]);
    expect(r.stdout.toString('hex')).not.toBe(
      Buffer.from(argv.map((a) => `${a}\0`).join('')).toString('hex'),
    );
    expect(wordsAfterSh(argv).map(String)).toEqual(argv);
  });

  it('parses MainPID, and the test probe parses environ bytes exactly', () => {
    expect(parseMainPid('4321\n')).toBe(4321);
    expect(parseMainPid('0\n')).toBe(0);
    expect(parseMainPid('garbage')).toBe(0);
    const raw = Buffer.concat([Buffer.from('A=x=y\0B=\0C= "q" \\ $\0'), Buffer.from('D=日本\0')]);
    const env = parseEnviron(raw);
    expect(env.get('A')?.toString()).toBe('x=y');
    expect(env.get('B')?.length).toBe(0);
    expect(env.get('C')?.toString()).toBe(' "q" \\ $');
    expect(env.get('D')?.equals(Buffer.from('日本'))).toBe(true);
    expect(agentProbes.processEnviron(1234)).toEqual(['cat', '/proc/1234/environ']);
    expect(() => agentProbes.processEnviron(0)).toThrow(/pid/);
    expect(agentProbes.readFile('/etc/cortex/agent.env')).toEqual(['cat', '--', '/etc/cortex/agent.env']);
  });
});
