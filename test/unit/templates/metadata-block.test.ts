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

const runScript = (tools: Record<string, number>, args: string[]) => {
  const dir = mkdtempSync(join(tmpdir(), 'mdblock-'));
  try {
    for (const [tool, code] of Object.entries(tools)) {
      writeFileSync(
        join(dir, tool),
        `#!/bin/sh\n/bin/cat > "${dir}/${tool}.stdin"\necho "$@" > "${dir}/${tool}.args"\nexit ${code}\n`,
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

  it('the iptables fallback rejects non-root traffic to the metadata address', () => {
    const r = runScript({ iptables: 0 }, ['--required']);
    expect(r.code).toBe(0);
    // -C succeeded (stub exits 0), so no second insert: the last call is the check.
    expect(r.iptablesArgs?.trim()).toBe('-C OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT');
  });
});
