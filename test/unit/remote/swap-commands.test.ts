import { randomBytes } from 'node:crypto';
import type { ExecResult, RemoteShell } from '../../../orchestrator/remote/ssh-shell';
import {
  decodeBatch,
  parseActiveSlot,
  parseBatchOutput,
  parseUpstreamRoute,
  swapCommands,
} from '../../../orchestrator/remote/swap-commands';
import { ACTIVE_SLOT_PATH } from '../../../templates/agent-slots';
import { Secret } from '../../../orchestrator/secret';
import { swapAgentEnvironment, swapModeOf } from '../../../orchestrator/steps/agent-swap';
import { slotOfPort, slotPort } from '../../../templates/agent-slots';

/** The agent swap's commands as data, and what the swap refuses before it touches the host. */
describe('swap commands', () => {
  it('act only on the agent slot units and the upstream unit', () => {
    expect(swapCommands.start('cortex-agent@green.service')).toEqual([
      'systemctl',
      'start',
      'cortex-agent@green.service',
    ]);
    expect(swapCommands.stop('cortex-agent@blue.service')[2]).toBe('cortex-agent@blue.service');
    for (const bad of [
      'ssh.service',
      'cortex-agent@red.service',
      'cortex-agent@blue.service; rm -rf /',
      'caddy.service',
    ])
      expect(() => swapCommands.stop(bad)).toThrow(/unit/);
  });

  it('link or move only slot env files inside /etc/cortex', () => {
    expect(
      swapCommands.linkEnvFile('/etc/cortex/agent-blue.env', '/etc/cortex/agent-blue.env.previous'),
    ).toEqual(['ln', '-f', '--', '/etc/cortex/agent-blue.env', '/etc/cortex/agent-blue.env.previous']);
    for (const bad of [
      '/etc/cortex/../shadow',
      '/etc/cortex/agent-red.env',
      '/tmp/agent-blue.env',
      '/etc/cortex/active-slot',
    ])
      expect(() => swapCommands.moveEnvFile(bad, '/etc/cortex/agent-blue.env')).toThrow(/path/);
  });

  it('count the connections to one port; probe plain URLs and print only the status', () => {
    expect(swapCommands.establishedTo(18790)).toEqual([
      'ss',
      '-H',
      '-t',
      '-n',
      'state',
      'established',
      '( sport = :18790 )',
    ]);
    expect(() => swapCommands.establishedTo(0)).toThrow(/port/);
    expect(swapCommands.httpProbeLoopback(18791, '/health').slice(-1)).toEqual([
      'http://127.0.0.1:18791/health',
    ]);
    expect(() => swapCommands.httpProbeLoopback(18791, '/h?x=1')).toThrow(/path/);
    expect(() =>
      swapCommands.httpsProbeThroughCaddy({
        siteName: 'a b.example.com',
        httpsPort: 443,
        path: '/health',
        localCa: false,
      }),
    ).toThrow(/siteName/);
  });

  it('parse the live route and the record', () => {
    const nft = [
      'table ip cortex_upstream {',
      '\tchain output {',
      '\t\ttype nat hook output priority dstnat; policy accept;',
      '\t\tip daddr 127.0.0.1 tcp dport 18789 redirect to :18791 comment "slot green"',
      '\t}',
      '}',
    ].join('\n');
    expect(parseUpstreamRoute(nft, 18789)).toBe(18791);
    expect(parseUpstreamRoute(nft, 18000)).toBeUndefined();
    expect(parseUpstreamRoute('', 18789)).toBeUndefined();
    expect(parseActiveSlot('green\n')).toBe('green');
    expect(parseActiveSlot('blue')).toBe('blue');
    expect(parseActiveSlot('purple\n')).toBeUndefined();
    expect(parseActiveSlot('')).toBeUndefined();
    expect([slotPort(18789, 'blue'), slotPort(18789, 'green')]).toEqual([18790, 18791]);
    expect([slotOfPort(18789, 18790), slotOfPort(18789, 18791), slotOfPort(18789, 18789)]).toEqual([
      'blue',
      'green',
      undefined,
    ]);
  });
});

describe('a batch: several swap commands in one round trip', () => {
  it('carries its steps as data, each helper step by mode (no nested script), and decodes back', () => {
    const steps = [
      { argv: swapCommands.activeSlot() },
      { argv: swapCommands.unitDigests('cortex-agent@blue.service'), stdin: true },
      {
        argv: swapCommands.establishedTo(18790),
        match: '^\\s*$',
        poll: { everyMs: 100, forMs: 30_000 },
      },
      { argv: swapCommands.start('cortex-agent@green.service'), required: true },
    ];
    const argv = swapCommands.batch(steps);
    expect(argv.slice(0, 3)).toEqual(['python3', '-I', '-c']);
    expect(argv[4]).toBe('batch');
    expect(argv).toHaveLength(6);
    // the helper's source is sent once, not once per helper step
    expect(argv[5]).not.toContain('import ');
    expect(JSON.parse(argv[5] as string).steps[1]).toEqual({
      helper: ['digests', 'cortex-agent@blue.service'],
      stdin: true,
    });
    expect(decodeBatch(argv)).toEqual(steps);
    expect(decodeBatch(swapCommands.activeSlot())).toBeUndefined();
    expect(decodeBatch(swapCommands.unitDigests('cortex-agent@blue.service'))).toBeUndefined();
  });

  it('refuses anything but the swap commands: no reader of a named file, no shell, no other script', () => {
    for (const argv of [
      ['cat', '--', '/etc/cortex/agent-blue.env'],
      ['cat', ACTIVE_SLOT_PATH],
      ['sh', '-c', 'cat /etc/cortex/agent-blue.env'],
      ['python3', '-I', '-c', 'print(open("/etc/cortex/agent-blue.env").read())'],
      ['python3', '-I', '-c', swapCommands.portHolders(1)[3] as string, 'batch', '{"steps":[]}'],
      ['base64', '/etc/cortex/agent-blue.env'],
      ['xargs', 'cat'],
    ])
      expect(() => swapCommands.batch([{ argv }])).toThrow(/steps\[0\]/);
    expect(swapCommands.batch([{ argv: ['cat', '--', ACTIVE_SLOT_PATH] }])).toHaveLength(6);
    expect(() => swapCommands.batch([])).toThrow(/steps/);
    expect(() =>
      swapCommands.batch([{ argv: swapCommands.activeSlot(), poll: { everyMs: -1, forMs: 10 } }]),
    ).toThrow(/poll/);
    expect(() => swapCommands.batch([{ argv: swapCommands.activeSlot(), match: '[^a]{99}' }])).toThrow(
      /match/,
    );
  });

  it("the helper's modes validate their arguments before anything runs", () => {
    expect(swapCommands.unitDigests('cortex-agent@green.service').slice(4)).toEqual([
      'digests',
      'cortex-agent@green.service',
    ]);
    for (const bad of ['cortex-upstream.service', 'ssh.service', 'cortex-agent@blue.service x'])
      expect(() => swapCommands.unitDigests(bad)).toThrow(/unit/);
    expect(
      swapCommands.waitHealthyLoopback('cortex-agent@blue.service', 18790, '/health', 60_000).slice(4),
    ).toEqual(['wait-healthy', 'cortex-agent@blue.service', '18790', '/health', '60000']);
    expect(() => swapCommands.waitHealthyLoopback('cortex-agent@blue.service', 18790, '/h?x', 1)).toThrow(
      /path/,
    );
    expect(() => swapCommands.waitHealthyLoopback('cortex-agent@blue.service', 18790, '/h', -1)).toThrow(
      /timeoutMs/,
    );
    expect(
      swapCommands.soak('cortex-agent@green.service', 18791, '/health', 5_000, 18790, 30_000).slice(4),
    ).toEqual(['soak', 'cortex-agent@green.service', '18791', '/health', '5000', '18790', '30000']);
    expect(swapCommands.soak('cortex-agent@blue.service', 18790, '/health', 0, 0, 0).slice(4)).toEqual([
      'soak',
      'cortex-agent@blue.service',
      '18790',
      '/health',
      '0',
      '0',
      '0',
    ]);
    const soakWith = (soakMs: number, oldPort: number, drainMs: number) => () =>
      swapCommands.soak('cortex-agent@green.service', 18791, '/health', soakMs, oldPort, drainMs);
    expect(soakWith(-1, 0, 0)).toThrow(/^soakMs: /);
    expect(soakWith(600_001, 0, 0)).toThrow(/^soakMs: /);
    expect(soakWith(1, 0, -5)).toThrow(/^drainMs: /);
    expect(soakWith(1, 18791, 1)).toThrow(/^oldPort: /);
    expect(soakWith(1, 70_000, 1)).toThrow(/^port: /);
    expect(() => swapCommands.soak('cortex-upstream.service', 18791, '/h', 1, 0, 1)).toThrow(/unit/);
    // a batch accepts it as a step (a helper mode), and decodes it back
    const step = { argv: swapCommands.soak('cortex-agent@green.service', 18791, '/health', 1, 18790, 1) };
    expect(decodeBatch(swapCommands.batch([step]))).toEqual([step]);
    expect(swapCommands.writeActiveSlot('green').slice(4)).toEqual(['write-record', 'green']);
    expect(swapCommands.writeEnvFile('blue').slice(4)).toEqual(['write-env', 'blue']);
    expect(() => swapCommands.writeEnvFile('../x' as 'blue')).toThrow(/slot/);
    expect(swapCommands.enable('cortex-agent@blue.service')).toEqual([
      'systemctl',
      'enable',
      '--no-reload',
      'cortex-agent@blue.service',
    ]);
    expect(
      swapCommands.removeEnvFiles('/etc/cortex/agent-blue.env', '/etc/cortex/agent-green.env.previous'),
    ).toEqual(['rm', '-f', '--', '/etc/cortex/agent-blue.env', '/etc/cortex/agent-green.env.previous']);
    for (const bad of ['/etc/cortex/active-slot', '/etc/shadow', '/etc/cortex/../cortex/agent-blue.env'])
      expect(() => swapCommands.removeEnvFiles(bad)).toThrow(/path/);
    expect(() => swapCommands.writeActiveSlot('red' as 'blue')).toThrow(/slot/);
  });

  it('reads the answers line by line; a stopped batch has fewer', () => {
    const line = (code: number, out: string) =>
      `${JSON.stringify({ code, out: Buffer.from(out).toString('base64'), err: '' })}\n`;
    const r = parseBatchOutput(`${line(0, 'blue\n')}${line(3, '')}garbage\n{"code":"x"}\n`);
    expect(r.map((x) => [x.code, x.stdout.toString()])).toEqual([
      [0, 'blue\n'],
      [3, ''],
    ]);
    expect(parseBatchOutput('')).toEqual([]);
  });
});

describe('swapAgentEnvironment before it touches the host', () => {
  const calls: string[] = [];
  const sent: (readonly string[])[] = [];
  const shell: RemoteShell = {
    exec: async (argv): Promise<ExecResult> => {
      calls.push(argv.join(' '));
      sent.push(argv);
      // A batch whose every step fails (Caddy's admin API among them).
      const steps = decodeBatch(argv) ?? [];
      return {
        code: 0,
        stdout: Buffer.from(steps.map(() => `${JSON.stringify({ code: 1, out: '', err: '' })}\n`).join('')),
        stderr: Buffer.alloc(0),
      };
    },
    writeFileAtomic: async (p) => void calls.push(`write ${p}`),
    close: async () => undefined,
  };
  beforeEach(() => {
    calls.length = 0;
    sent.length = 0;
  });

  it('the runtime profile says the mode: echo blue-green, openclaw held restart (it cannot run twice)', async () => {
    expect(swapModeOf('echo')).toBe('blue-green');
    expect(swapModeOf('openclaw')).toBe('held-restart');
    await expect(
      swapAgentEnvironment(
        shell,
        { deploymentId: 'd', runtime: 'openclaw', env: new Map() },
        { mode: 'blue-green' },
      ),
    ).rejects.toMatchObject({ code: 'invalid_input', field: 'mode' });
    expect(calls).toEqual([]);
  });

  it('a bad variable is refused before any command, without its value in the message', async () => {
    const key = `canary-${randomBytes(16).toString('hex')}`;
    const err = await swapAgentEnvironment(shell, {
      deploymentId: 'd',
      runtime: 'echo',
      env: new Map([['PATH', new Secret(key)]]),
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'invalid_input', field: 'env.PATH' });
    expect(String((err as Error).message)).not.toContain(key);
    expect(calls).toEqual([]);
  });

  it("without Caddy's admin API answering, nothing changes: healthy false", async () => {
    const r = await swapAgentEnvironment(shell, {
      deploymentId: 'd',
      runtime: 'echo',
      env: new Map([['ANTHROPIC_API_KEY', new Secret('x')]]),
    });
    expect(r).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason: expect.stringMatching(/admin API/) as unknown,
    });
    // Only the first look was sent (reads: Caddy's config, the record, the route, digests): no
    // write, no start, no stop.
    expect(calls).toHaveLength(1);
    // (a helper step's argv is shown without the helper's source)
    const steps = (decodeBatch(sent[0] ?? []) ?? []).map((s) =>
      (s.argv[0] === 'python3' ? s.argv.slice(4) : s.argv).join(' '),
    );
    expect(steps[0]).toMatch(/^curl .*--unix-socket/);
    expect(steps.join('\n')).not.toMatch(/systemctl (start|stop|restart|enable|disable)|^rm |write-record/m);
  });
});
