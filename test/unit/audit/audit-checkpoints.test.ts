import { createHash, randomUUID } from 'node:crypto';
import { makeAuditCheckpoints } from '../../../orchestrator/audit/audit-checkpoints';
import { makeMemoryCheckpointKey } from '../../../orchestrator/audit/checkpoint-signer';
import { checkpointName, type CheckpointStore } from '../../../orchestrator/audit/checkpoint-store';
import type { Rpc } from '../../../orchestrator/db/rpc';
import { rejection } from '../../support/rejection';

/**
 * A fake of the three SQL functions over in-memory chains (rows by seq, head, anchor), so the
 * comparison's every branch is reached without a database; the real one is in
 * test/integration/audit-checkpoints.test.ts.
 */
interface Chain {
  rows: Map<number, string>;
  head: number;
  anchor: number;
  anchorHash: string;
}
const fakeDb = () => {
  const chains = new Map<string, Chain>();
  let clock = Date.parse('2026-11-30T02:00:00Z');
  const iso = () => new Date((clock += 1000)).toISOString().replace('Z', '000Z');
  const hash = (s: string) => createHash('sha256').update(s).digest('hex');
  const append = (chain: string, n = 1) => {
    const c = chains.get(chain) ?? { rows: new Map(), head: 0, anchor: 0, anchorHash: '0'.repeat(64) };
    chains.set(chain, c);
    for (let i = 0; i < n; i++) c.rows.set(++c.head, hash(`${chain}:${c.head}:${Math.random()}`));
  };
  const rpc = (async (fn: string, args: Record<string, unknown>) => {
    if (fn === 'secret_access_log__heads')
      return {
        at: iso(),
        chains: [...chains].map(([chain, c]) => ({
          chain,
          seq: c.head,
          hash: c.rows.get(c.head),
          at: iso(),
        })),
      };
    if (fn === 'secret_access_log__verify')
      return {
        ok: true,
        rows_checked: chains.get(args.p_org_id as string)?.rows.size ?? 0,
        first_bad_id: null,
        problem: null,
      };
    if (fn === 'secret_access_log__hashes_at') {
      const ids = args.p_chain_ids as string[];
      const seqs = args.p_seqs as number[];
      return ids.map((chain, i) => {
        const c = chains.get(chain);
        const seq = seqs[i]!;
        const rows = c ? [...c.rows.keys()] : [];
        return {
          chain,
          seq,
          exists: c !== undefined,
          head_seq: c?.head ?? null,
          max_seq: rows.length ? Math.max(...rows) : null,
          anchor_seq: c?.anchor ?? null,
          hash: c?.rows.get(seq) ?? (c && c.anchor === seq ? c.anchorHash : null),
        };
      });
    }
    throw new Error(`unexpected ${fn}`);
  }) as Rpc;
  return { chains, append, rpc };
};

const memoryStore = () => {
  const files = new Map<string, string>();
  const store: CheckpointStore = {
    location: 'memory',
    put: async (name, body) => {
      if (files.has(name)) throw new Error('exists');
      files.set(name, body);
    },
    newest: async () => {
      const name = [...files.keys()].sort().at(-1);
      return name === undefined ? null : { name, body: files.get(name)! };
    },
  };
  return { files, store };
};

const setup = () => {
  const db = fakeDb();
  const { files, store } = memoryStore();
  const cp = makeAuditCheckpoints({ rpc: db.rpc, store, key: makeMemoryCheckpointKey() });
  return { db, files, store, cp };
};

describe('audit checkpoints (fake database)', () => {
  it('before the first checkpoint, says so and passes on hashes alone', async () => {
    const { db, cp } = setup();
    db.append(randomUUID(), 3);
    expect(await cp.verifyAgainstCheckpoint()).toMatchObject({ ok: true, checkpoint: null, findings: [] });
  });

  it('finds rows removed at the signed seq, and retention past it', async () => {
    const { db, cp } = setup();
    const [a, b] = [randomUUID(), randomUUID()];
    db.append(a, 5);
    db.append(b, 5);
    await cp.checkpoint();
    db.append(a, 2);
    db.chains.get(a)!.rows.delete(5); // the signed row gone, later ones kept
    const t = db.chains.get(b)!; // retention trimmed everything up to seq 6, past the signed seq 5
    db.append(b, 2);
    for (const s of [1, 2, 3, 4, 5, 6]) t.rows.delete(s);
    t.anchor = 6;
    const v = await cp.verifyAgainstCheckpoint();
    expect(v.findings.map((f) => [f.chain, f.problem]).sort()).toEqual(
      [
        [a, 'removed'],
        [b, 'trimmed'],
      ].sort(),
    );
  });

  it('accepts retention that anchored exactly at the signed row', async () => {
    const { db, cp } = setup();
    const a = randomUUID();
    db.append(a, 4);
    await cp.checkpoint();
    const c = db.chains.get(a)!;
    c.anchorHash = c.rows.get(4)!;
    c.anchor = 4;
    db.append(a, 1);
    for (const s of [1, 2, 3, 4]) c.rows.delete(s);
    expect(await cp.verifyAgainstCheckpoint()).toMatchObject({ ok: true });
  });

  it('refuses an older checkpoint copied under a newer name (a rollback of the store)', async () => {
    const { db, files, cp } = setup();
    const a = randomUUID();
    db.append(a, 2);
    const first = await cp.checkpoint();
    db.append(a, 3);
    await cp.checkpoint();
    // whoever can write the store deletes rows 3-5 and puts the first checkpoint back on top
    const c = db.chains.get(a)!;
    for (const s of [3, 4, 5]) c.rows.delete(s);
    c.head = 2;
    files.set(checkpointName('2099-01-01T00:00:00.000000Z'), files.get(first.name)!);
    const v = await cp.verifyAgainstCheckpoint();
    expect(v.ok).toBe(false);
    expect(v.findings[0]).toMatchObject({ chain: null, problem: 'bad_checkpoint' });
    expect(v.findings[0]?.message).toContain('is named for another time than its signed one');
  });

  it('never signs over a log that fails against the newest checkpoint', async () => {
    const { db, files, cp } = setup();
    const a = randomUUID();
    db.append(a, 3);
    await cp.checkpoint();
    db.chains.delete(a);
    const err = await rejection(cp.checkpoint());
    expect(err.code).toBe('audit_tampered');
    expect(err.message).toContain(`chain ${a}: missing`);
    expect(files.size).toBe(1);
  });
});
