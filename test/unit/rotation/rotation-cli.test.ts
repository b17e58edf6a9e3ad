import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../../orchestrator/cli/cortexctl';
import {
  describeRevocation,
  describeRotation,
  readValueFile,
  revocationJson,
  revokeFollowUp,
} from '../../../orchestrator/cli/rotation-commands';
import type { Revocation } from '../../../orchestrator/rotation/revocation-store';
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

describe('cortexctl secrets revocation / revoke: a revocation after its job', () => {
  const REV = '7b0c2a52-3f0e-4b8e-9a57-0d7c6f3c2b11';
  const rev = (o: Partial<Revocation> = {}): Revocation => ({
    id: REV,
    orgId: 'o1',
    secretId: 's1',
    deploymentId: null,
    state: 'done',
    jobId: `revoke-${REV}`,
    attempts: 1,
    result: { revoked: ['d1'], failed: [], vault_deleted: true },
    createdAt: '2026-11-30T18:00:00Z',
    updatedAt: '2026-11-30T18:00:05Z',
    finishedAt: '2026-11-30T18:00:05Z',
    ...o,
  });
  const said = (r: Revocation): string => {
    let out = '';
    describeRevocation({ env: {}, out: (t) => (out += t) }, r);
    return out;
  };

  it('argument errors name the field, before any connection', async () => {
    expect(await cli(['secrets', 'revocation'])).toEqual({
      code: 1,
      out: 'cortexctl secrets: revocation id: is required\n',
    });
    expect(await cli(['secrets', 'revocation', 'not-a-uuid'])).toEqual({
      code: 1,
      out: 'cortexctl secrets: revocation_id: must be a UUID\n',
    });
    expect((await cli(['secrets', 'revocation', REV, 'extra'])).out).toContain('unexpected argument extra');
    expect((await cli(['secrets', 'revocation', REV, '--deployment', 'd'])).out).toContain(
      "Unknown option '--deployment'",
    );
  });

  it('a done whole-secret revocation: what it revoked, the vault deleted, no follow-up', () => {
    const out = said(rev());
    expect(out).toContain(`revocation ${REV}  done  secret s1  (every deployment and the vault)  1 run(s)`);
    expect(out).toContain('finished 2026-11-30T18:00:05Z');
    expect(out).toContain('  d1  revoked\n');
    expect(out).toContain('every version deleted from the vault');
    expect(out).not.toMatch(/OPEN|STILL HOLDS|NOT deleted/);
  });

  it('one left open by a provision: which deployment still holds the key, the vault kept, and how to follow it', () => {
    const out = said(
      rev({
        state: 'open',
        attempts: 2,
        finishedAt: null,
        result: {
          revoked: ['d1', 'd3'],
          unhealthy: [{ deploymentId: 'd3', reason: 'the agent is not healthy without the secret' }],
          failed: [
            {
              deploymentId: 'd2',
              reason: 'stack_locked: deployment d2 is provisioning past its secrets step',
            },
          ],
          failed_count: 25,
          vault_deleted: false,
        },
      }),
    );
    expect(out).toContain(`revocation ${REV}  open`);
    expect(out).not.toContain('finished');
    expect(out).toContain(
      '  d2  STILL HOLDS THE KEY: stack_locked: deployment d2 is provisioning past its secrets step',
    );
    expect(out).toContain('  d3  revoked, but its agent is NOT healthy without the key');
    expect(out).toContain('  d1  revoked\n');
    expect(out).toContain('NOT deleted from the vault yet');
    // the stored lists keep the first 20: the rest is counted, not hidden
    expect(out).toContain('  … and 24 more still holding the key (not listed)\n');
    expect(out).not.toContain('more revoked');
    expect(out).toContain(
      `OPEN: a deployment still held the key; the rotation sweep runs it again until it is done. Follow it: cortexctl secrets revocation ${REV}`,
    );
  });

  it('one no run has ended yet, and one for a single deployment (no vault line)', () => {
    expect(said(rev({ state: 'open', attempts: 0, result: null, finishedAt: null }))).toContain(
      `OPEN: its job has not finished a run yet. Follow it: cortexctl secrets revocation ${REV}`,
    );
    const one = said(
      rev({ deploymentId: 'd1', result: { revoked: ['d1'], failed: [], vault_deleted: false } }),
    );
    expect(one).toContain('(deployment d1)');
    expect(one).not.toContain('vault');
  });

  it('secrets revoke ends with the revocation id, and when it is left open says so and how to follow it', () => {
    expect(revokeFollowUp({ id: REV, state: 'done' })).toBe(`revocation ${REV} done\n`);
    const open = revokeFollowUp({ id: REV, state: 'open' });
    expect(open).toContain(`revocation ${REV} is still OPEN`);
    expect(open).toContain(`follow it: cortexctl secrets revocation ${REV}`);
  });

  it('--json: the known fields only; anything else a stored result holds is not printed', () => {
    const j = revocationJson(
      rev({ result: { revoked: ['d1'], failed: [], vault_deleted: true, value: 'sk-ant-canary-x' } }),
    );
    expect(j).toEqual({
      id: REV,
      secretId: 's1',
      deploymentId: null,
      state: 'done',
      attempts: 1,
      result: {
        revoked: ['d1'],
        unhealthy: [],
        failed: [],
        revokedCount: 1,
        unhealthyCount: 0,
        failedCount: 0,
        vaultDeleted: true,
      },
      createdAt: '2026-11-30T18:00:00Z',
      finishedAt: '2026-11-30T18:00:05Z',
    });
    expect(JSON.stringify(j)).not.toContain('sk-ant-canary');
  });
});
