import { agentCommands, parseEnviron, parseMainPid } from '../../../orchestrator/remote/agent-commands';
import { quoteArgv } from '../../../orchestrator/remote/shell-quote';

describe('agent commands as data', () => {
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

  it('reads a process environment only for a real pid', () => {
    expect(agentCommands.processEnviron(1234)).toEqual(['cat', '/proc/1234/environ']);
    expect(agentCommands.processCmdline(1234)).toEqual(['cat', '/proc/1234/cmdline']);
    expect(() => agentCommands.processCmdline(-1)).toThrow(/pid/);
    expect(() => agentCommands.processEnviron(0)).toThrow(/pid/);
    expect(() => agentCommands.processEnviron(1.5)).toThrow(/pid/);
  });

  it('guards file paths and ends options before them', () => {
    expect(agentCommands.stat('/etc/cortex/agent.env')).toEqual([
      'stat',
      '--format=%u %g %a %F',
      '--',
      '/etc/cortex/agent.env',
    ]);
    expect(() => agentCommands.readFile('etc/x')).toThrow(/path/);
    expect(() => agentCommands.removeFile('/etc/cortex/../shadow')).toThrow(/path/);
  });

  it('every builder output survives quoting', () => {
    for (const argv of [
      agentCommands.cloudInitWait(),
      agentCommands.listDir('/etc/cortex'),
      agentCommands.daemonReload(),
    ])
      expect(quoteArgv(argv).length).toBeGreaterThan(0);
  });

  it('parses MainPID and environ bytes exactly', () => {
    expect(parseMainPid('4321\n')).toBe(4321);
    expect(parseMainPid('0\n')).toBe(0);
    expect(parseMainPid('garbage')).toBe(0);
    const raw = Buffer.concat([Buffer.from('A=x=y\0B=\0C= "q" \\ $\0'), Buffer.from('D=日本\0')]);
    const env = parseEnviron(raw);
    expect(env.get('A')?.toString()).toBe('x=y');
    expect(env.get('B')?.length).toBe(0);
    expect(env.get('C')?.toString()).toBe(' "q" \\ $');
    expect(env.get('D')?.equals(Buffer.from('日本'))).toBe(true);
  });
});
