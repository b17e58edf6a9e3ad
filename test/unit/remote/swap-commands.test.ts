import { randomBytes } from 'node:crypto';
import type { ExecResult, RemoteShell } from '../../../orchestrator/remote/ssh-shell';
import {
  parseActiveSlot,
  parseUpstreamRoute,
  swapCommands,
} from '../../../orchestrator/remote/swap-commands';
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

describe('swapAgentEnvironment before it touches the host', () => {
  const calls: string[] = [];
  const shell: RemoteShell = {
    exec: async (argv): Promise<ExecResult> => {
      calls.push(argv.join(' '));
      return { code: 1, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    },
    writeFileAtomic: async (p) => void calls.push(`write ${p}`),
    close: async () => undefined,
  };
  beforeEach(() => (calls.length = 0));

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
    // Only the read of Caddy's config was sent: no write, no start, no stop.
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatch(/^curl .*--unix-socket/);
  });
});
