import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTemplate } from '../../../templates/render';

/**
 * The metadata-block script under /bin/sh with stub firewall tools on an otherwise empty PATH:
 * what it exits with decides whether cortex-metadata-block.service fails, and with it (Requires=)
 * whether the agent may start. `--required` (production) must fail whenever the block is not in
 * place; without it (local hosts) the script warns and succeeds.
 */
const script = loadTemplate('cortex-block-metadata.sh');
const RULE = 'ip daddr 169.254.169.254 meta skuid != 0 counter reject';

/** A stub's exit code: one for every call, or by its first argument (`-C`, `-I`, …; else 0). */
type StubExit = number | Record<string, number>;

const runScript = (tools: Record<string, StubExit>, args: string[]) => {
  const dir = mkdtempSync(join(tmpdir(), 'mdblock-'));
  try {
    for (const [tool, exit] of Object.entries(tools)) {
      const codeFor =
        typeof exit === 'number'
          ? `exit ${exit}`
          : `case "$1" in\n${Object.entries(exit)
              .map(([a, c]) => `  ${a}) exit ${c} ;;\n`)
              .join('')}esac\nexit 0`;
      writeFileSync(
        join(dir, tool),
        `#!/bin/sh\n/bin/cat > "${dir}/${tool}.stdin"\necho "$@" > "${dir}/${tool}.args"\necho "$@" >> "${dir}/${tool}.calls"\n${codeFor}\n`,
      );
      chmodSync(join(dir, tool), 0o755);
    }
    writeFileSync(join(dir, 'block.sh'), script);
    const r = spawnSync('/bin/sh', [join(dir, 'block.sh'), ...args], {
      env: { PATH: dir },
      encoding: 'utf8',
    });
    const read = (f: string): string | undefined => {
      try {
        return readFileSync(join(dir, f), 'utf8');
      } catch {
        return undefined;
      }
    };
    return {
      code: r.status,
      stderr: r.stderr,
      nftStdin: read('nft.stdin'),
      iptablesArgs: read('iptables.args'),
      iptablesCalls: read('iptables.calls')?.trim().split('\n') ?? [],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

describe('cortex-block-metadata', () => {
  it.each([[[]], [['--required']]])('loads the nft rule and succeeds (args %j)', (args) => {
    const r = runScript({ nft: 0 }, args);
    expect(r.code).toBe(0);
    expect(r.nftStdin).toContain(RULE);
    expect(r.stderr).toBe('');
  });

  it.each([
    ['nft fails', { nft: 1 }, /nft could not load the rule; metadata service NOT blocked/],
    ['iptables (the fallback) fails', { iptables: 2 }, /iptables could not insert the rule/],
    ['no firewall tool exists', {}, /neither nft nor iptables is installed/],
  ])('when %s: --required exits 1, best-effort warns and exits 0', (_, tools, warning) => {
    const required = runScript(tools, ['--required']);
    expect(required.code).toBe(1);
    expect(required.stderr).toMatch(warning);
    const bestEffort = runScript(tools, []);
    expect(bestEffort.code).toBe(0);
    expect(bestEffort.stderr).toMatch(warning);
  });

  const IPT_RULE = 'OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT';

  it('the iptables fallback inserts the rule rejecting non-root traffic when it is not there yet', () => {
    const r = runScript({ iptables: { '-C': 1 } }, ['--required']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.iptablesCalls).toEqual([`-C ${IPT_RULE}`, `-I ${IPT_RULE}`]);
  });

  it('the iptables fallback inserts nothing when the rule is already there (idempotent)', () => {
    const r = runScript({ iptables: { '-C': 0 } }, ['--required']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.iptablesCalls).toEqual([`-C ${IPT_RULE}`]);
  });

  it('a failed insert after a failed check fails --required', () => {
    const r = runScript({ iptables: { '-C': 1, '-I': 4 } }, ['--required']);
    expect(r.code).toBe(1);
    expect(r.iptablesCalls).toEqual([`-C ${IPT_RULE}`, `-I ${IPT_RULE}`]);
    expect(r.stderr).toBe(
      'cortex-block-metadata: iptables could not insert the rule; metadata service NOT blocked\n',
    );
  });
});
