import {
  METADATA_BLOCK_UNIT,
  renderAgentTemplateUnit,
  renderAgentUnit,
} from '../../../templates/systemd-unit';
import { echoRuntime, type RuntimeProfile } from '../../../templates/runtime-profiles';

/**
 * What keeps the agent's systemd unit from being injected into: the plain-word, unit-option and
 * runtime-name checks at their exact boundaries, with their exact messages, and the exact lines
 * the values land on. No external tool (systemd-analyze runs in systemd-unit.test.ts): written for
 * mutation testing, which runs these on every mutant.
 */
const rt = echoRuntime(18001);
const message = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return 'accepted';
};
const lines = (unit: string): string[] => unit.split('\n');
const withName = (name: string): RuntimeProfile => ({ ...rt, name: name as RuntimeProfile['name'] });

describe('renderAgentUnit input checks', () => {
  it('an ExecStart word is plain: every character systemd gives meaning to is refused, by position only', () => {
    const plain = 'Aa0_./:=,+-';
    expect(message(() => renderAgentUnit({ ...rt, execStart: ['/usr/bin/python3', plain] }))).toBe(
      'accepted',
    );
    for (const bad of [
      '$HOME',
      'a$',
      '%i',
      'a b',
      '"a"',
      "'a'",
      'a\\b',
      'a;b',
      'a\nb',
      '',
      'a\tb',
      '~a',
      'a*',
    ])
      expect([
        bad,
        message(() => renderAgentUnit({ ...rt, execStart: ['/usr/bin/python3', '-I', bad] })),
      ]).toEqual([bad, 'runtime echo: ExecStart word 2 is not plain']);
    expect(message(() => renderAgentUnit({ ...rt, execStart: ['/usr/bin/$x'] }))).toBe(
      'runtime echo: ExecStart word 0 is not plain',
    );
  });

  it('ExecStart starts with an absolute path, and an empty one is refused the same way', () => {
    for (const execStart of [['python3'], ['./python3'], []])
      expect(message(() => renderAgentUnit({ ...rt, execStart }))).toBe(
        'runtime echo: ExecStart needs an absolute path',
      );
  });

  it('a unit option is one Key=value line: an upper-case key of two letters or more, any value but a line break', () => {
    for (const ok of ['Ab=', 'MemoryMax=1G', 'Nice=-5 "quoted"'])
      expect(message(() => renderAgentUnit({ ...rt, unitOptions: [ok] }))).toBe('accepted');
    for (const bad of [
      'A=1',
      'nice=1',
      'Ab1=x',
      ' Ab=x',
      'Ab x=1',
      'Ab',
      'Ab=x\nExecStartPre=/bin/sh',
      'Ab=x\ry',
      'Ab=x\n',
    ])
      expect([bad, message(() => renderAgentUnit({ ...rt, unitOptions: ['MemoryMax=1G', bad] }))]).toEqual([
        bad,
        'runtime echo: bad unit option 1 (not Key=value)',
      ]);
  });

  it('the runtime name is a lower-case word of 1 to 32 characters', () => {
    for (const ok of ['a', `a${'b'.repeat(31)}`, 'a-1'])
      expect(message(() => renderAgentUnit(withName(ok)))).toBe('accepted');
    for (const bad of [`a${'b'.repeat(32)}`, 'Echo', '1a', '-a', 'a b', 'a\n', ''])
      expect([bad, message(() => renderAgentUnit(withName(bad)))]).toEqual([
        bad,
        'runtime name must be a lower-case word',
      ]);
    expect(lines(renderAgentUnit(withName('x-9')))).toContain('Description=Cortex agent (x-9 runtime)');
  });

  it('the env file is an absolute plain path', () => {
    expect(lines(renderAgentUnit(rt, '/run/a.env'))).toContain('EnvironmentFile=/run/a.env');
    for (const bad of ['a.env', '/a b.env', '/a$.env', '/a\n.env', ''])
      expect(message(() => renderAgentUnit(rt, bad))).toBe('envFile must be an absolute plain path');
  });

  it('puts each value on its own line, exactly: ExecStart words joined by one space, the env file, the options', () => {
    const l = lines(
      renderAgentUnit({ ...rt, unitOptions: ['MemoryMax=1G', 'Nice=5'] }, '/etc/cortex/agent-blue.env'),
    );
    expect(l).toContain('Description=Cortex agent (echo runtime)');
    expect(l).toContain(`ExecStart=${rt.execStart.join(' ')}`);
    expect(l.filter((x) => x.startsWith('EnvironmentFile='))).toEqual([
      'EnvironmentFile=/etc/cortex/agent-blue.env',
    ]);
    const i = l.indexOf('MemoryMax=1G');
    expect(l.slice(i - 1, i + 2)).toEqual(['# Runtime-specific:', 'MemoryMax=1G', 'Nice=5']);
    expect(l).toContain(`Requires=${METADATA_BLOCK_UNIT}`);
    expect(l).toContain(`After=network-online.target ${METADATA_BLOCK_UNIT}`);
    // the default env file is the first slot's
    expect(lines(renderAgentUnit(rt))).toContain('EnvironmentFile=/etc/cortex/agent-blue.env');
  });
});

describe('renderAgentTemplateUnit input checks', () => {
  const at = (port: number, execStart: readonly string[] = ['/usr/bin/python3', `--port=${port}`]) =>
    message(() => renderAgentTemplateUnit({ ...rt, port, execStart }));

  it('the runtime port is 1 to 65533 (its slots listen on the next two)', () => {
    for (const p of [1, 65533]) expect(at(p)).toBe('accepted');
    for (const p of [0, 65534, 1.5, Number.NaN])
      expect(at(p)).toBe('runtime echo: port must be 1-65533 (the slots listen on the next two)');
  });

  it('needs exactly one --port=<runtime port> word, and puts the slot port variable in its place', () => {
    const needs = 'runtime echo: ExecStart needs exactly one --port=<runtime port> word';
    expect(at(18001, ['/usr/bin/python3'])).toBe(needs);
    expect(at(18001, ['/usr/bin/python3', '--port=18002'])).toBe(needs);
    expect(at(18001, ['/usr/bin/python3', '--port=18001', '--port=18001'])).toBe(needs);
    const l = lines(
      renderAgentTemplateUnit({ ...rt, execStart: ['/usr/bin/python3', '--port=18001', '-x', 'port=18001'] }),
    );
    expect(l).toContain('ExecStart=/usr/bin/python3 --port=${CORTEX_AGENT_PORT} -x port=18001');
    expect(l.filter((x) => x.startsWith('EnvironmentFile='))).toEqual([
      'EnvironmentFile=/etc/cortex/agent-%i.env',
      'EnvironmentFile=/usr/local/lib/cortex/slot-%i.env',
    ]);
    expect(l).toContain('Description=Cortex agent (echo runtime, slot %i)');
  });

  it('checks the runtime like the plain unit does', () => {
    expect(
      message(() =>
        renderAgentTemplateUnit({ ...rt, execStart: ['/usr/bin/python3', '$X', '--port=18001'] }),
      ),
    ).toBe('runtime echo: ExecStart word 1 is not plain');
    expect(message(() => renderAgentTemplateUnit(withName('Echo')))).toBe(
      'runtime name must be a lower-case word',
    );
  });
});
