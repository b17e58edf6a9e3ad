import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../../orchestrator/cli/cortexctl';
import { describeRotation, readValueFile } from '../../../orchestrator/cli/rotation-commands';
import type { Rotation } from '../../../orchestrator/rotation/rotation-store';

/** `cortexctl secrets rotate|revoke|rotation`: argument errors before any connection, value files. */
const cli = async (
  argv: string[],
  readSecret?: () => Promise<string>,
): Promise<{ code: number; out: string }> => {
  let out = '';
  const code = await runCli(argv, {
    env: { LOG_LEVEL: 'silent' },
    out: (t) => (out += t),
    ...(readSecret ? { readSecret } : {}),
  });
  return { code, out };
};

describe('cortexctl secrets rotation commands', () => {
  it('name what is missing or wrong, and never take a value from argv', async () => {
    expect(await cli(['secrets', 'rotate'])).toEqual({
      code: 1,
      out: 'cortexctl secrets: secret id: is required\n',
    });
    const r = await cli(['secrets', 'rotate', 'x', '--value', 'sk-ant-canary-argv']);
    expect(r.code).toBe(1);
    expect(r.out).toContain("Unknown option '--value'");
    expect(r.out).not.toContain('sk-ant-canary-argv');
    expect((await cli(['secrets', 'rotate', 'x', '--value-file', 'a', '--value-stdin'])).out).toContain(
      'give --value-file or --value-stdin, not both',
    );
    expect(
      (await cli(['secrets', 'rotate', 'x', '--value-stdin'], () => Promise.resolve('\n'))).out,
    ).toContain('value: is empty');
    expect((await cli(['secrets', 'rotation'])).out).toContain('rotation id: is required');
    expect((await cli(['secrets', 'max-age', 'x', 'soon'])).out).toContain(
      'max_age_seconds: must be whole seconds or none',
    );
  });

  it('a value file: one trailing newline dropped; a directory, an empty or an oversized file refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cortex-rot-'));
    const f = join(dir, 'key');
    const canary = `canary-${randomBytes(16).toString('hex')}`;
    await writeFile(f, `${canary}\n`, { mode: 0o600 });
    expect((await readValueFile(f)).reveal()).toBe(canary);
    await expect(readValueFile(dir)).rejects.toThrow('--value-file: must be a regular file');
    await writeFile(f, '', { mode: 0o600 });
    await expect(readValueFile(f)).rejects.toThrow('--value-file: is empty');
    await writeFile(f, 'x'.repeat(70_000), { mode: 0o600 });
    await expect(readValueFile(f)).rejects.toThrow('--value-file: must be at most 64 KiB');
    await expect(readValueFile(join(dir, 'missing'))).rejects.toThrow('--value-file: cannot be opened');
  });
});

describe('cortexctl secrets rotation: what it says about the old version', () => {
  const rot = (o: Partial<Rotation> = {}): Rotation => ({
    id: 'r1',
    orgId: 'o1',
    secretId: 's1',
    fromVersion: 1,
    toVersion: 2,
    state: 'completed',
    leaked: false,
    graceSeconds: 3600,
    jobId: 'j1',
    createdAt: '2026-11-30T18:00:00Z',
    finishedAt: '2026-11-30T18:01:00Z',
    retireAfter: '2026-11-30T19:01:00Z',
    oldRetiredAt: null,
    deployments: [
      { deploymentId: 'd1', fromVersion: 1, state: 'switched', reason: null, swapMode: 'blue-green' },
      {
        deploymentId: 'd2',
        fromVersion: 1,
        state: 'rolled_back',
        reason: 'unhealthy',
        swapMode: 'blue-green',
      },
    ],
    ...o,
  });
  const said = (r: Rotation): string => {
    let out = '';
    describeRotation({ env: {}, out: (t) => (out += t) }, r);
    return out;
  };

  it('a leak with a host left on the leaked version says it is NOT deleted and which deployment holds it, never "grace period"', () => {
    const out = said(rot({ leaked: true, graceSeconds: 0, retireAfter: '2026-11-30T18:01:00Z' }));
    expect(out).toContain(
      'LEAKED version v1 NOT deleted yet: still used by 1 deployment(s) (d2 rolled_back)',
    );
    expect(out).not.toContain('grace period');
  });

  it('a leak retired, a rotation in its grace period (and one with a host kept on the old version), a running one', () => {
    expect(said(rot({ leaked: true, oldRetiredAt: '2026-11-30T18:01:05Z' }))).toContain(
      'old version retired at 2026-11-30T18:01:05Z',
    );
    const clean = rot({ deployments: [rot().deployments[0]!] });
    expect(said(clean)).toContain('old version kept until 2026-11-30T19:01:00Z (grace period)\n');
    expect(said(rot())).toContain('(grace period), and still used by 1 deployment(s) (d2 rolled_back)');
    expect(said(rot({ state: 'running' }))).not.toMatch(/retired|kept|NOT deleted/);
  });
});
