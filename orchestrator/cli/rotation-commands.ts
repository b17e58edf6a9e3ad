import { open } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { QueueEvents, type ConnectionOptions } from 'bullmq';
import { loadConfig } from '../config';
import {
  makePipelineFromConfig,
  redisOptionsFromUrl,
  type Pipeline,
} from '../deployments/pipeline-from-config';
import { OrchestratorError, invalidInput } from '../errors';
import { makeLogger } from '../log';
import { makeRotationFromPipeline, type RotationWiring } from '../rotation/rotation-from-config';
import { revocationSummary } from '../rotation/rotation-service';
import type { Revocation } from '../rotation/revocation-store';
import type { Rotation } from '../rotation/rotation-store';
import { Secret } from '../secret';
import { parseInput, uuid } from '../secrets/secret-input';
import type { CliContext } from './cortexctl';

/**
 * `cortexctl secrets rotate|revoke|rotation|revocation|max-age|overdue`: key rotation from the ops CLI.
 * A new value comes from a file (`--value-file`, at most 64 KiB, one trailing newline dropped) or
 * standard input / a no-echo prompt, never from argv.
 */
type Sub = (args: readonly string[], ctx: CliContext) => Promise<number>;
type Flags = Record<string, { type: 'string' | 'boolean' }>;

const parse = (args: readonly string[], options: Flags, positionals: number) => {
  try {
    const r = parseArgs({ args: [...args], options, allowPositionals: true, strict: true });
    if (r.positionals.length > positionals)
      throw new Error(`unexpected argument ${r.positionals[positionals]}`);
    return r;
  } catch (err) {
    throw new OrchestratorError(
      'invalid_input',
      (err as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''),
      {
        field: 'argv',
      },
    );
  }
};

const need = (v: string | undefined, what: string): string => {
  if (v === undefined || v === '') throw invalidInput(what, 'is required');
  return v;
};

const withRotation = async <T>(
  ctx: CliContext,
  fn: (p: Pipeline, r: RotationWiring) => Promise<T>,
): Promise<T> => {
  const config = loadConfig({ LOG_LEVEL: 'warn', ...ctx.env });
  const p = await makePipelineFromConfig(config, makeLogger({ level: config.LOG_LEVEL, name: 'cortexctl' }));
  try {
    return await fn(p, makeRotationFromPipeline(p));
  } finally {
    await p.close(1_000);
  }
};

const MAX_VALUE_FILE = 64 * 1024;

/** A value file: a regular file, at most 64 KiB; its one trailing newline is not part of the key. */
export const readValueFile = async (file: string): Promise<Secret> => {
  const fh = await open(file, 'r').catch(() => {
    throw invalidInput('--value-file', 'cannot be opened');
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw invalidInput('--value-file', 'must be a regular file');
    if (st.size > MAX_VALUE_FILE) throw invalidInput('--value-file', 'must be at most 64 KiB');
    const v = (await fh.readFile('utf8')).replace(/\r?\n$/, '');
    if (v === '') throw invalidInput('--value-file', 'is empty');
    return new Secret(v);
  } finally {
    await fh.close();
  }
};

const readValue = async (ctx: CliContext, file: string | undefined): Promise<Secret> => {
  if (file) return readValueFile(file);
  if (!ctx.readSecret)
    throw new OrchestratorError('invalid_input', 'no standard input to read the value from');
  const v = (await ctx.readSecret('new value (not echoed): ')).replace(/\r?\n$/, '');
  if (v === '') throw invalidInput('value', 'is empty (pipe it on standard input, or use --value-file)');
  return new Secret(v);
};

const json = (ctx: CliContext, v: unknown): void => ctx.out(`${JSON.stringify(v, null, 2)}\n`);

/** The deployments a completed rotation left on an older version (rolled back, or failed). */
const leftBehind = (r: Rotation): Rotation['deployments'] =>
  r.deployments.filter((d) => d.state === 'rolled_back' || d.state === 'failed');

export const describeRotation = (ctx: CliContext, r: Rotation): void => {
  ctx.out(
    `rotation ${r.id}  ${r.state}  secret ${r.secretId}  v${r.fromVersion} → v${r.toVersion}${r.leaked ? '  (leaked)' : ''}\n`,
  );
  for (const d of r.deployments)
    ctx.out(
      `  ${d.deploymentId}  ${d.state.padEnd(11)} from v${d.fromVersion}${d.reason ? `  ${d.reason}` : ''}\n`,
    );
  if (r.state !== 'completed') return;
  if (r.oldRetiredAt) {
    ctx.out(`  old version retired at ${r.oldRetiredAt}\n`);
    return;
  }
  // Not retired: the grace period, or (the only reason for a leak) a deployment still on it. A
  // version in use is never deleted under its host; the maintenance sweep deletes it once none is.
  const behind = leftBehind(r);
  const users = behind.length
    ? ` still used by ${behind.length} deployment(s) (${behind.map((d) => `${d.deploymentId} ${d.state}`).join(', ')}): ` +
      'kept until none is (fix and retry or remove them, or rotate again); the maintenance sweep then deletes it'
    : '';
  ctx.out(
    r.leaked
      ? `  LEAKED version v${r.fromVersion} NOT deleted yet:${users || ' waiting for the maintenance sweep'}\n`
      : `  old version kept until ${r.retireAfter ?? '?'} (grace period)${users ? `, and${users}` : ''}\n`,
  );
};

/** How to look at a revocation again (printed wherever one is left open). */
export const followRevocationHint = (id: string): string => `cortexctl secrets revocation ${id}`;

/** A revocation as `--json` prints it: the API's shape, the stored reasons in full (ops only). */
export const revocationJson = (r: Revocation) => ({
  id: r.id,
  secretId: r.secretId,
  deploymentId: r.deploymentId,
  state: r.state,
  attempts: r.attempts,
  result: revocationSummary(r),
  createdAt: r.createdAt,
  finishedAt: r.finishedAt,
});

/**
 * A revocation and its last run. Open means not finished: queued, running, or left open because a
 * deployment still held the key (a provision past its `secrets` step); the rotation sweep runs its
 * job again until it is done. The stored reasons are value-free (deployment ids, error codes).
 */
export const describeRevocation = (ctx: CliContext, r: Revocation): void => {
  const scope = r.deploymentId ? `deployment ${r.deploymentId}` : 'every deployment and the vault';
  ctx.out(
    `revocation ${r.id}  ${r.state}  secret ${r.secretId}  (${scope})  ${r.attempts} run(s)  opened ${r.createdAt}${r.finishedAt ? `  finished ${r.finishedAt}` : ''}\n`,
  );
  const sum = revocationSummary(r);
  if (sum) {
    const unhealthy = new Map(sum.unhealthy.map((u) => [u.deploymentId, u.reason]));
    for (const d of sum.revoked)
      ctx.out(
        `  ${d}  revoked${unhealthy.has(d) ? `, but its agent is NOT healthy without the key (${unhealthy.get(d)}: restarted without it anyway; details in the worker's log)` : ''}\n`,
      );
    for (const f of sum.failed) ctx.out(`  ${f.deploymentId}  STILL HOLDS THE KEY: ${f.reason}\n`);
    // the stored lists keep the first 20 of each
    const more = [
      [sum.revokedCount - sum.revoked.length, 'revoked'],
      [sum.unhealthyCount - sum.unhealthy.length, 'not healthy without the key'],
      [sum.failedCount - sum.failed.length, 'still holding the key'],
    ] as const;
    for (const [n, what] of more) if (n > 0) ctx.out(`  … and ${n} more ${what} (not listed)\n`);
    if (!r.deploymentId)
      ctx.out(
        sum.vaultDeleted
          ? '  every version deleted from the vault\n'
          : '  NOT deleted from the vault yet: the key takes no new binding and no rotation while the revocation is open\n',
      );
  }
  if (r.state === 'open')
    ctx.out(
      sum
        ? `  OPEN: a deployment still held the key; the rotation sweep runs it again until it is done. Follow it: ${followRevocationHint(r.id)}\n`
        : `  OPEN: its job has not finished a run yet. Follow it: ${followRevocationHint(r.id)}\n`,
    );
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll the rotation until it completes (and, for a leak, until its old version is retired). */
const follow = async (ctx: CliContext, rot: RotationWiring, id: string, timeoutMs = 30 * 60_000) => {
  const seen = new Set<string>();
  const t0 = Date.now();
  let completedAt = 0;
  for (;;) {
    const r = await rot.service.status(id);
    for (const d of r.deployments) {
      const key = `${d.deploymentId}/${d.state}`;
      if (seen.has(key) || d.state === 'pending') continue;
      seen.add(key);
      ctx.out(`  ${d.deploymentId}  ${d.state}${d.reason ? `: ${d.reason}` : ''}\n`);
    }
    // a leak's old version goes once every host moved; one a rolled-back host still runs is kept
    const leakSettled =
      !r.leaked || r.oldRetiredAt !== null || (completedAt !== 0 && Date.now() - completedAt > 10_000);
    if (r.state === 'completed' && leakSettled) return r;
    if (r.state === 'completed' && completedAt === 0) completedAt = Date.now();
    if (Date.now() - t0 > timeoutMs)
      throw new OrchestratorError('timeout', `rotation ${id} still ${r.state}`);
    await sleep(500);
  }
};

const rotate: Sub = async (args, ctx) => {
  const r = parse(
    args,
    {
      'value-file': { type: 'string' },
      'value-stdin': { type: 'boolean' },
      leaked: { type: 'boolean' },
      detach: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    1,
  );
  const secretId = need(r.positionals[0], 'secret id');
  if (r.values['value-file'] && r.values['value-stdin'])
    throw invalidInput('argv', 'give --value-file or --value-stdin, not both');
  const value = await readValue(ctx, r.values['value-file'] as string | undefined);
  const leaked = Boolean(r.values.leaked);
  return withRotation(ctx, async (_p, rot) => {
    const started = await rot.service.rotate({ secretId, value, leaked }, { actor: 'cortexctl' });
    if (!r.values.json)
      ctx.out(
        `rotation ${started.id}: v${started.fromVersion} → v${started.toVersion}, ${started.deployments.length} deployment(s)\n`,
      );
    if (r.values.detach) {
      if (r.values.json) json(ctx, started);
      return 0;
    }
    const done = await follow(r.values.json ? { ...ctx, out: () => undefined } : ctx, rot, started.id);
    const reads = leaked ? await rot.service.readsOf(secretId, started.fromVersion) : [];
    if (r.values.json) json(ctx, { rotation: done, leakedVersionReads: leaked ? reads : undefined });
    else {
      describeRotation(ctx, done);
      if (leaked) {
        ctx.out(`reads of the leaked version v${started.fromVersion} (${reads.length}):\n`);
        for (const a of reads)
          ctx.out(
            `  ${a.at}  ${a.outcome.padEnd(7)} deployment ${a.deploymentId ?? '-'}  job ${a.jobId ?? '-'}  by ${a.actor ?? '-'}\n`,
          );
      }
    }
    return done.deployments.some((d) => d.state === 'rolled_back' || d.state === 'failed') ? 1 : 0;
  });
};

const revoke: Sub = async (args, ctx) => {
  const r = parse(
    args,
    { deployment: { type: 'string' }, detach: { type: 'boolean' }, json: { type: 'boolean' } },
    1,
  );
  const secretId = need(r.positionals[0], 'secret id');
  const deploymentId = r.values.deployment as string | undefined;
  return withRotation(ctx, async (p, rot) => {
    const events = new QueueEvents('revoke', {
      connection: redisOptionsFromUrl(p.config.REDIS_URL) as ConnectionOptions,
      prefix: p.config.QUEUE_PREFIX,
    });
    try {
      await events.waitUntilReady();
      const res = await rot.service.revoke(
        { secretId, ...(deploymentId ? { deploymentId } : {}) },
        { actor: 'cortexctl' },
      );
      if (!r.values.json)
        ctx.out(`revocation ${res.revocationId}, job ${res.jobId}: ${res.deployments} deployment(s)\n`);
      if (r.values.detach) {
        if (r.values.json) json(ctx, { revocationId: res.revocationId, jobId: res.jobId });
        else ctx.out(`follow it: ${followRevocationHint(res.revocationId)}\n`);
        return 0;
      }
      const job = await p.queues.queues.revoke.getJob(res.jobId);
      const out = (
        job
          ? await job.waitUntilFinished(events, 30 * 60_000).catch((err: unknown) => {
              // the revocation outlives its job (the sweep runs it again): say where to look
              if (!r.values.json) ctx.out(`follow it: ${followRevocationHint(res.revocationId)}\n`);
              throw err;
            })
          : undefined
      ) as
        | {
            revoked: string[];
            unhealthy?: { deploymentId: string; reason: string }[];
            failed: { deploymentId: string; reason: string }[];
            vaultDeleted: boolean;
            open?: boolean;
          }
        | undefined;
      // the revocation as Postgres holds it after the run: the job's answer says what this run did,
      // the record whether the revoke is over (a run a provision held leaves it open)
      const rev = await rot.service.revocation(res.revocationId);
      if (r.values.json) json(ctx, { ...(out ?? {}), revocationId: rev.id, revocation: revocationJson(rev) });
      else {
        if (out) {
          const unhealthy = new Map((out.unhealthy ?? []).map((u) => [u.deploymentId, u.reason]));
          for (const d of out.revoked)
            ctx.out(
              `  ${d}  revoked${unhealthy.has(d) ? `, but its agent is NOT healthy without the key (${unhealthy.get(d)}: restarted without it anyway; details in the worker's log)` : ''}\n`,
            );
          for (const f of out.failed) ctx.out(`  ${f.deploymentId}  FAILED: ${f.reason}\n`);
          if (out.vaultDeleted) ctx.out('  every version deleted from the vault\n');
          else if (!deploymentId && out.failed.length > 0)
            ctx.out(
              '  NOT deleted from the vault yet: a deployment above still holds it (a provision past its secrets step, a busy deployment or a host out of reach); the key takes no new binding, and the revocation stays open: the rotation sweep runs it again until it is done\n',
            );
        }
        ctx.out(revokeFollowUp(rev));
      }
      return out && out.failed.length === 0 && rev.state === 'done' ? 0 : 1;
    } finally {
      await events.close();
    }
  });
};

/** What `secrets revoke` says last: the revocation's id, and when it is still open, how to follow it. */
export const revokeFollowUp = (rev: Pick<Revocation, 'id' | 'state'>): string =>
  rev.state === 'done'
    ? `revocation ${rev.id} done\n`
    : `revocation ${rev.id} is still OPEN: the rotation sweep runs it again until nothing holds the key; follow it: ${followRevocationHint(rev.id)}\n`;

const revocation: Sub = async (args, ctx) => {
  const r = parse(args, { json: { type: 'boolean' } }, 1);
  // checked before any connection: a malformed id names the field
  const id = parseInput(uuid, need(r.positionals[0], 'revocation id'), 'revocation_id');
  return withRotation(ctx, async (_p, rot) => {
    const rev = await rot.service.revocation(id);
    if (r.values.json) json(ctx, revocationJson(rev));
    else describeRevocation(ctx, rev);
    // 0 only when it is over with nothing left holding the key (as `secrets revoke` exits)
    const failed = revocationSummary(rev)?.failedCount ?? 0;
    return rev.state === 'done' && failed === 0 ? 0 : 1;
  });
};

const rotation: Sub = async (args, ctx) => {
  const r = parse(args, { json: { type: 'boolean' } }, 1);
  const id = need(r.positionals[0], 'rotation id');
  return withRotation(ctx, async (_p, rot) => {
    const s = await rot.service.status(id);
    if (r.values.json) json(ctx, s);
    else describeRotation(ctx, s);
    return 0;
  });
};

const maxAge: Sub = async (args, ctx) => {
  const r = parse(args, {}, 2);
  const id = need(r.positionals[0], 'secret id');
  const raw = need(r.positionals[1], 'max age');
  const seconds = raw === 'none' ? null : Number(raw);
  if (seconds !== null && !Number.isInteger(seconds))
    throw invalidInput('max_age_seconds', 'must be whole seconds or none');
  return withRotation(ctx, async (_p, rot) => {
    await rot.service.setMaxAge(id, seconds, { actor: 'cortexctl' });
    ctx.out(seconds === null ? 'max age removed\n' : `max age ${seconds} s\n`);
    return 0;
  });
};

const overdue: Sub = async (args, ctx) => {
  const r = parse(args, { org: { type: 'string' }, json: { type: 'boolean' } }, 0);
  return withRotation(ctx, async (_p, rot) => {
    const keys = await rot.service.overdue(r.values.org as string | undefined);
    if (r.values.json) json(ctx, keys);
    else
      for (const k of keys)
        ctx.out(
          `${k.secretId}  ${k.name}  v${k.currentVersion}  ${Math.round(k.ageSeconds / 86400)} d old (max ${Math.round(k.maxAgeSeconds / 86400)} d)  org ${k.orgId}\n`,
        );
    if (!r.values.json && keys.length === 0) ctx.out('no key is older than its max age\n');
    return keys.length === 0 ? 0 : 1;
  });
};

/** Subcommands of `cortexctl secrets` (beside `add`). */
export const rotationSecretCommands: Readonly<Record<string, Sub>> = {
  rotate,
  revoke,
  rotation,
  revocation,
  'max-age': maxAge,
  overdue,
};

export const ROTATION_USAGE =
  'secrets rotate <id> [--value-file f | --value-stdin] [--leaked] | revoke <id> [--deployment d] [--detach] | rotation <rotation id> | revocation <revocation id> [--json] | max-age <id> <seconds|none> | overdue [--org o]';
