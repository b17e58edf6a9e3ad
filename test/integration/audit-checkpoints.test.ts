import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool, type PoolClient } from 'pg';
import { makeAuditCheckpointsFromConfig } from '../../orchestrator/audit/audit-checkpoints-from-config';
import { makeFileCheckpointKey } from '../../orchestrator/audit/checkpoint-signer';
import { runCli } from '../../orchestrator/cli/cortexctl';
import { loadConfig } from '../../orchestrator/config';
import { makePgRpc, type PgRpc } from '../../orchestrator/db/pg-rpc';
import { Secret } from '../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../orchestrator/secrets/secrets-service';
import { canary } from '../support/canary';
import { makeOrgWithDeployment, testDatabaseUrl } from '../support/db';

/** The fingerprint key (kept outside the database); in memory for the test. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * Signed checkpoints against the three tamperings the hash chain alone cannot see, each done as the
 * table owner (a superuser with the audit triggers disabled): rows cut from a chain's end with its
 * head moved back, a chain rewritten with every hash recomputed, a chain dropped with its head.
 * Tampering breaks chains for good, so this runs in a scratch database dropped afterwards.
 */
const name = `cortex_cp_${randomBytes(4).toString('hex')}`;
const base = new URL(testDatabaseUrl());
const scratchUrl = (() => {
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
})();
let su: Pool;
let owner: Pool;
let db: PgRpc;
let state: string;

const env = (stateDir = state) => ({
  DATABASE_URL: scratchUrl,
  LOG_LEVEL: 'silent',
  CORTEX_STATE_DIR: stateDir,
});

beforeAll(async () => {
  su = new Pool({ connectionString: base.toString(), max: 1 });
  await su.query(`create database ${name}`);
  const plain = new URL(scratchUrl);
  plain.search = '';
  execFileSync('bash', [join(__dirname, '../../scripts/db-setup.sh'), plain.toString()], { stdio: 'pipe' });
  owner = new Pool({ connectionString: scratchUrl, max: 1 });
  // an idle client ended from outside (another engineer's pg_terminate_backend) must not fail a test
  owner.on('error', () => undefined);
  su.on('error', () => undefined);
  db = makePgRpc({ connectionString: scratchUrl, max: 2 });
  state = mkdtempSync(join(tmpdir(), 'cortex-cp-'));
}, 120_000);

afterAll(async () => {
  await db.close();
  await owner.end();
  await su.query(`drop database if exists ${name} with (force)`);
  await su.end();
  rmSync(state, { recursive: true, force: true });
});

const cli = async (args: string[], stateDir = state): Promise<{ code: number; out: string }> => {
  let out = '';
  const code = await runCli(args, { env: env(stateDir), out: (t) => (out += t) });
  return { code, out };
};

/** An organisation whose chain holds `rows` audit rows (one `create` each). */
const orgWithRows = async (rows: number): Promise<string> => {
  const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey });
  const { orgId } = await makeOrgWithDeployment(db.rpc);
  for (let i = 0; i < rows; i++)
    await secrets.create({ orgId, name: `k${i}`, provider: 'other', value: new Secret(canary('other')) });
  return orgId;
};

/** As the table owner, with the audit log's own triggers out of the way for this transaction. */
const asOwner = async (fn: (c: PoolClient) => Promise<void>): Promise<void> => {
  const c = await owner.connect();
  try {
    await c.query('begin');
    await c.query('alter table public.secret_access_log disable trigger user');
    await c.query('alter table public.secret_access_log_chains disable trigger user');
    await fn(c);
    await c.query('alter table public.secret_access_log enable trigger user');
    await c.query('alter table public.secret_access_log_chains enable trigger user');
    await c.query('commit');
  } catch (err) {
    await c.query('rollback');
    throw err;
  } finally {
    c.release();
  }
};

const plainVerify = async (chain?: string): Promise<{ ok: boolean; rows_checked: number }> =>
  (
    await owner.query<{ v: { ok: boolean; rows_checked: number } }>(
      'select public.secret_access_log__verify($1) as v',
      [chain ?? null],
    )
  ).rows[0]!.v;

let truncated: string;
let rewritten: string;
let dropped: string;
let clean: string;
let made: { code: number; out: string };

// Shared by every test (each must pass alone, with -t): four chains, then one signed checkpoint.
beforeAll(async () => {
  truncated = await orgWithRows(4);
  rewritten = await orgWithRows(3);
  dropped = await orgWithRows(2);
  clean = await orgWithRows(2);
  made = await cli(['audit-checkpoint']);
}, 60_000);

it('signs every chain, and a clean log that kept growing passes against it', async () => {
  expect(made).toEqual({
    code: 0,
    out: expect.stringMatching(/^audit checkpoint checkpoint-\S+\.json signed: 4 chains/) as string,
  });
  const files = readdirSync(join(state, 'audit-checkpoints'));
  expect(files).toHaveLength(1);
  const signed = JSON.parse(
    JSON.parse(readFileSync(join(state, 'audit-checkpoints', files[0]!), 'utf8')).payload as string,
  ) as {
    chains: { chain: string; seq: number }[];
  };
  expect(signed.chains.map((c) => [c.chain, c.seq]).sort()).toEqual(
    [
      [truncated, 4],
      [rewritten, 3],
      [dropped, 2],
      [clean, 2],
    ].sort(),
  );

  // appended after the checkpoint: a chain that grew, and a chain that is new
  await makeSecretsService({ rpc: db.rpc, fingerprintKey }).create({
    orgId: clean,
    name: 'later',
    provider: 'other',
    value: new Secret(canary('other')),
  });
  const newcomer = await orgWithRows(1);
  const v = await makeAuditCheckpointsFromConfig(loadConfig(env()), db.rpc).verifyAgainstCheckpoint();
  expect(v).toMatchObject({ ok: true, findings: [], chainsChecked: 5, checkpoint: { chains: 4 } });
  expect(v.hashChains).toMatchObject({ ok: true, rowsChecked: 4 + 3 + 2 + 3 + 1 });
  const good = await cli(['audit-verify']);
  expect(good.code).toBe(0);
  expect(good.out).toContain('every chain still reaches its signed head');
  expect((await cli(['audit-verify', '--org', newcomer])).code).toBe(0);
}, 60_000);

it('refuses a checkpoint whose signature was tampered with, or that another key signed', async () => {
  // tampered: the signed payload says the truncated chain ends earlier than it did
  const forged = mkdtempSync(join(tmpdir(), 'cortex-cp-forged-'));
  const wrongKey = mkdtempSync(join(tmpdir(), 'cortex-cp-key-'));
  try {
    cpSync(state, forged, { recursive: true });
    const dir = join(forged, 'audit-checkpoints');
    const file = join(dir, readdirSync(dir)[0]!);
    const envelope = JSON.parse(readFileSync(file, 'utf8')) as { payload: string };
    const edited = envelope.payload.replace(/"seq":4,/, '"seq":2,');
    expect(edited).not.toBe(envelope.payload);
    writeFileSync(file, JSON.stringify({ ...envelope, payload: edited }));
    const bad = await cli(['audit-verify'], forged);
    expect(bad.code).toBe(1);
    expect(bad.out).toMatch(/bad_checkpoint: checkpoint \S+ .*signature that does not verify/);

    // another key: the checkpoints are ours, the key file is not the one that signed them
    cpSync(join(state, 'audit-checkpoints'), join(wrongKey, 'audit-checkpoints'), { recursive: true });
    await makeFileCheckpointKey(join(wrongKey, 'keys', 'audit_checkpoint_ed25519')).signingKey();
    // and with a key that cannot check the newest checkpoint, no new one is signed over it
    expect((await cli(['audit-checkpoint'], wrongKey)).code).toBe(1);
    const other = await cli(['audit-verify'], wrongKey);
    expect(other.code).toBe(1);
    expect(other.out).toMatch(/bad_checkpoint: .*was signed by key [0-9a-f]{16}, not by this key/);
    expect(readdirSync(join(wrongKey, 'audit-checkpoints'))).toHaveLength(1);
  } finally {
    rmSync(forged, { recursive: true, force: true });
    rmSync(wrongKey, { recursive: true, force: true });
  }
}, 60_000);

it('catches a cut tail, a recomputed chain and a dropped chain that the hash chain alone misses', async () => {
  await asOwner(async (c) => {
    // (a) the last two rows deleted, the head moved back to the row before them
    await c.query('delete from public.secret_access_log where chain_id = $1 and seq > 2', [truncated]);
    await c.query(
      `update public.secret_access_log_chains h set head_seq = l.seq, head_id = l.id, head_hash = l.hash
         from public.secret_access_log l where l.chain_id = h.chain_id and l.seq = 2 and h.chain_id = $1`,
      [truncated],
    );
    // (b) the first row's actor changed and every hash after it recomputed, the head's too
    await c.query(
      `do $$
       declare
         r public.secret_access_log;
         v_prev text;
       begin
         for r in select * from public.secret_access_log l where l.chain_id = '${rewritten}' order by l.seq loop
           if v_prev is not null then r.prev_hash := v_prev; end if;
           if r.seq = 1 then r.actor := 'nobody saw this'; end if;
           r.hash := public.secret_access_log__hash(r);
           update public.secret_access_log l set actor = r.actor, prev_hash = r.prev_hash, hash = r.hash where l.id = r.id;
           v_prev := r.hash;
         end loop;
         update public.secret_access_log_chains h set head_hash = v_prev where h.chain_id = '${rewritten}';
       end $$`,
    );
    // (c) a whole chain and its head gone
    await c.query('delete from public.secret_access_log where chain_id = $1', [dropped]);
    await c.query('delete from public.secret_access_log_chains where chain_id = $1', [dropped]);
  });

  // the positive control: the hash chains alone see nothing wrong, for each chain or all of them
  for (const chain of [truncated, rewritten, dropped])
    expect(await plainVerify(chain)).toMatchObject({ ok: true });
  expect(await plainVerify()).toMatchObject({ ok: true });
  const { rows } = await owner.query<{ actor: string }>(
    'select actor from public.secret_access_log where chain_id = $1 and seq = 1',
    [rewritten],
  );
  expect(rows[0]?.actor).toBe('nobody saw this');

  // against the checkpoint, each is found and named
  const v = await makeAuditCheckpointsFromConfig(loadConfig(env()), db.rpc).verifyAgainstCheckpoint();
  expect(v.ok).toBe(false);
  expect(v.hashChains.ok).toBe(true);
  expect(v.findings.map((f) => [f.chain, f.problem]).sort()).toEqual(
    [
      [truncated, 'truncated'],
      [rewritten, 'rewritten'],
      [dropped, 'missing'],
    ].sort(),
  );
  expect(v.findings.find((f) => f.chain === truncated)?.message).toContain(
    'ends at seq 2, the checkpoint signed seq 4',
  );

  const bad = await cli(['audit-verify']);
  expect(bad.code).toBe(1);
  expect(bad.out).toContain(`truncated: chain ${truncated}: rows deleted from the end`);
  expect(bad.out).toContain(`rewritten: chain ${rewritten}: the row at seq 3 no longer has the signed hash`);
  expect(bad.out).toContain(`missing: chain ${dropped}: missing`);
  expect(bad.out).not.toContain(clean);
  // one chain at a time, as `--org` asks
  expect(await cli(['audit-verify', '--org', clean])).toMatchObject({ code: 0 });
  expect(await cli(['audit-verify', '--org', dropped])).toMatchObject({
    code: 1,
    out: expect.stringContaining('missing') as string,
  });

  // and a tampered log is never signed: no new checkpoint blesses it
  const refused = await cli(['audit-checkpoint']);
  expect(refused.code).toBe(1);
  expect(refused.out).toContain('no checkpoint was signed');
  expect(readdirSync(join(state, 'audit-checkpoints'))).toHaveLength(1);
}, 60_000);
