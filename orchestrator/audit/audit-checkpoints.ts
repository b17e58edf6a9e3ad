import type { Rpc } from '../db/rpc';
import { OrchestratorError, isOrchestratorError } from '../errors';
import { parseInput, uuid } from '../secrets/secret-input';
import type { AuditVerification } from '../secrets/secrets-service';
import {
  CHECKPOINT_FORMAT,
  openCheckpoint,
  signCheckpoint,
  type CheckpointKeySource,
  type SignedChainHead,
} from './checkpoint-signer';
import { checkpointName, timeOfName, type CheckpointStore } from './checkpoint-store';

/**
 * Signed audit checkpoints. `checkpoint()` signs every chain's head (sequence number, hash, time)
 * with a key the database never sees and stores it outside the database; `verifyAgainstCheckpoint()`
 * runs the hash-chain verify per chain and checks every chain of the newest checkpoint still exists,
 * still reaches the signed sequence number, and still has the signed hash there. The hash chain alone
 * cannot see a tail cut off with the head moved back, a chain recomputed end to end, or a chain
 * dropped with its head: whoever can do those (the table owner) cannot forge the signature.
 */

/** What went wrong; `chain` is null for a problem of the checkpoint itself. */
export interface CheckpointFinding {
  readonly chain: string | null;
  readonly problem:
    | 'bad_checkpoint' // unreadable, bad signature, wrong key, key missing
    | 'missing' // the chain and its head are gone
    | 'truncated' // rows deleted from the end (and the head moved back)
    | 'rewritten' // the row at the signed seq has another hash
    | 'trimmed' // retention removed rows past the signed seq
    | 'removed' // the row at the signed seq is gone, later rows are not
    | 'changed' // the hash chain itself (secret_access_log__verify)
    | 'reordered';
  readonly message: string;
}

export interface CheckpointVerification {
  readonly ok: boolean;
  /** The hash chains alone, summed over the chains checked (as `secret_access_log__verify` reports). */
  readonly hashChains: AuditVerification;
  /** The newest checkpoint, or null when none has been made yet (then only hashes were checked). */
  readonly checkpoint: { readonly name: string; readonly at: string; readonly chains: number } | null;
  readonly chainsChecked: number;
  readonly findings: readonly CheckpointFinding[];
}

export interface StoredCheckpoint {
  readonly name: string;
  readonly at: string;
  readonly chains: number;
  readonly location: string;
}

interface Heads {
  at: string;
  chains: { chain: string; seq: number | null; hash: string | null; at: string | null }[];
}
interface StoredAt {
  chain: string;
  seq: number;
  exists: boolean;
  head_seq: number | null;
  max_seq: number | null;
  anchor_seq: number | null;
  hash: string | null;
}
interface ChainVerify {
  ok: boolean;
  rows_checked: number;
  first_bad_id: number | null;
  problem: 'changed' | 'removed' | 'reordered' | null;
}

const BATCH = 10_000;

export const makeAuditCheckpoints = (deps: {
  rpc: Rpc;
  store: CheckpointStore;
  key: CheckpointKeySource;
}) => {
  const { rpc, store, key } = deps;

  /** Compares signed heads with what the database holds now. */
  const compare = async (signed: readonly SignedChainHead[]): Promise<CheckpointFinding[]> => {
    const findings: CheckpointFinding[] = [];
    for (let i = 0; i < signed.length; i += BATCH) {
      const batch = signed.slice(i, i + BATCH);
      const now = await rpc<StoredAt[]>('secret_access_log__hashes_at', {
        p_chain_ids: batch.map((s) => s.chain),
        p_seqs: batch.map((s) => s.seq),
      });
      batch.forEach((s, j) => {
        const r = now[j];
        const at = `seq ${s.seq}`;
        const f = (problem: CheckpointFinding['problem'], what: string): void => {
          findings.push({ chain: s.chain, problem, message: `chain ${s.chain}: ${what}` });
        };
        if (!r || r.chain !== s.chain || r.seq !== s.seq)
          throw new OrchestratorError('internal', 'hashes_at: answer out of order');
        if (!r.exists)
          f('missing', `missing: neither its head nor any row exists (the checkpoint signed ${at})`);
        else if (r.hash === s.hash) return;
        else if (r.hash !== null)
          f(
            'rewritten',
            `the row at ${at} no longer has the signed hash: the chain was rewritten (or cut back and re-grown)`,
          );
        else if (r.anchor_seq !== null && r.anchor_seq > s.seq)
          f(
            'trimmed',
            `rows up to seq ${r.anchor_seq} were deleted, past the signed ${at}: cannot be confirmed`,
          );
        else if (Math.max(r.head_seq ?? 0, r.max_seq ?? 0) < s.seq)
          f(
            'truncated',
            `rows deleted from the end: the chain ends at seq ${Math.max(r.head_seq ?? 0, r.max_seq ?? 0)}, the checkpoint signed ${at}`,
          );
        else f('removed', `the row at ${at} is gone`);
      });
    }
    return findings;
  };

  /** The newest checkpoint's signed heads, or a finding saying why it cannot be trusted. */
  const loadNewest = async (): Promise<
    | { kind: 'none' }
    | { kind: 'bad'; name: string; finding: CheckpointFinding }
    | { kind: 'ok'; name: string; at: string; chains: SignedChainHead[] }
  > => {
    const newest = await store.newest();
    if (!newest) return { kind: 'none' };
    const bad = (why: string) => ({
      kind: 'bad' as const,
      name: newest.name,
      finding: {
        chain: null,
        problem: 'bad_checkpoint' as const,
        message: `checkpoint ${newest.name} (in ${store.location}) ${why}`,
      },
    });
    let opened;
    try {
      opened = openCheckpoint(newest.body, await key.verifyKey());
    } catch (err) {
      if (isOrchestratorError(err) && err.code === 'config_invalid')
        return bad(`cannot be checked: ${err.message}`);
      throw err;
    }
    if (!opened.ok) return bad(opened.reason);
    // An older checkpoint copied under a newer name would roll verification back.
    if (timeOfName(newest.name) !== opened.payload.at)
      return bad(`is named for another time than its signed one (${opened.payload.at})`);
    return { kind: 'ok', name: newest.name, at: opened.payload.at, chains: opened.payload.chains };
  };

  /**
   * Every chain's hash chain, and every chain of the newest checkpoint against it. With `chain`,
   * only that chain (an organisation id, or the platform or org-less chain id).
   */
  const verifyAgainstCheckpoint = async (opts: { chain?: string } = {}): Promise<CheckpointVerification> => {
    const only = opts.chain === undefined ? undefined : parseInput(uuid, opts.chain, 'chain');
    const newest = await loadNewest();
    const findings: CheckpointFinding[] = newest.kind === 'bad' ? [newest.finding] : [];
    const signed =
      newest.kind === 'ok' ? newest.chains.filter((c) => only === undefined || c.chain === only) : [];

    const heads = await rpc<Heads>('secret_access_log__heads', {});
    const chains = [...new Set([...heads.chains.map((c) => c.chain), ...signed.map((c) => c.chain)])]
      .filter((c) => only === undefined || c === only)
      .sort();
    if (only !== undefined && !chains.includes(only)) chains.push(only);

    let rows = 0;
    let first: { id: number | null; problem: AuditVerification['problem'] } | null = null;
    for (const chain of chains) {
      const v = await rpc<ChainVerify>('secret_access_log__verify', { p_org_id: chain });
      rows += Number(v.rows_checked);
      if (v.ok) continue;
      const id = v.first_bad_id === null ? null : Number(v.first_bad_id);
      // as the SQL does across chains: report the earliest bad row
      if (first === null || (id !== null && (first.id === null || id < first.id)))
        first = { id, problem: v.problem };
      findings.push({
        chain,
        problem: v.problem ?? 'changed',
        message: `chain ${chain}: hash chain broken ${id === null ? 'at its head' : `at row ${id}`} (${v.problem ?? 'inconsistent'})`,
      });
    }
    findings.push(...(await compare(signed)));

    return {
      ok: findings.length === 0,
      hashChains: {
        ok: first === null,
        rowsChecked: rows,
        firstBadId: first?.id ?? null,
        problem: first?.problem ?? null,
      },
      checkpoint:
        newest.kind === 'ok'
          ? { name: newest.name, at: newest.at, chains: newest.chains.length }
          : newest.kind === 'bad'
            ? { name: newest.name, at: timeOfName(newest.name) ?? '?', chains: 0 }
            : null,
      chainsChecked: chains.length,
      findings,
    };
  };

  /**
   * Signs and stores every chain's head, after checking the log against the newest checkpoint: a
   * tampered log is never signed (that would bless the tampering), it is an `audit_tampered` error.
   */
  const checkpoint = async (): Promise<StoredCheckpoint> => {
    // Heads first, then the verify: heads read before a verify that passes are a verified state,
    // provided they are still there afterwards (checked below), whatever was appended meanwhile.
    const heads = await rpc<Heads>('secret_access_log__heads', {});
    const v = await verifyAgainstCheckpoint();
    const chains: SignedChainHead[] = heads.chains.flatMap((c) =>
      c.seq === null || c.hash === null || c.at === null
        ? []
        : [{ chain: c.chain, seq: Number(c.seq), hash: c.hash, at: c.at }],
    );
    const findings = v.ok ? await compare(chains) : v.findings;
    if (findings.length > 0)
      throw new OrchestratorError(
        'audit_tampered',
        `the audit log does not verify, so no checkpoint was signed:\n${findings.map((f) => `  ${f.message}`).join('\n')}`,
      );
    const body = signCheckpoint({ format: CHECKPOINT_FORMAT, at: heads.at, chains }, await key.signingKey());
    const name = checkpointName(heads.at);
    await store.put(name, body);
    return { name, at: heads.at, chains: chains.length, location: store.location };
  };

  return { checkpoint, verifyAgainstCheckpoint };
};

export type AuditCheckpoints = ReturnType<typeof makeAuditCheckpoints>;
