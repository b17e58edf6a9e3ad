import type { Rpc } from '../../../orchestrator/db/rpc';
import { makeEventHub, type EventBatch } from '../../../orchestrator/api/event-hub';
import { makeLogger } from '../../../orchestrator/log';

/**
 * The API's one poller for all event streams: however many streams are open, one query per tick;
 * streams of one deployment at one cursor share their entry; with no stream, no query at all.
 */
const log = makeLogger({ level: 'silent', name: 'hub-test' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const fakeRpc = () => {
  const calls: { ids: string[]; after: string[] }[] = [];
  const rpc = (async (fn: string, args: Record<string, unknown>) => {
    expect(fn).toBe('deployment_events__poll');
    const ids = args.p_deployment_ids as string[];
    const after = args.p_after_ids as string[];
    calls.push({ ids, after });
    // one new event per deployment per call, after its cursor
    return ids.map((id, i) => ({
      deployment_id: id,
      after_id: after[i],
      status: 'provisioning',
      settled: true,
      events: [{ id: String(Number(after[i]) + 1), deployment_id: id, at: 'now', kind: 'step', payload: {} }],
    }));
  }) as Rpc;
  return { rpc, calls };
};

it('one query per tick for 300 streams over 3 deployments, deduplicated by (deployment, cursor)', async () => {
  const { rpc, calls } = fakeRpc();
  const hub = makeEventHub({ rpc, log }, { pollMs: 20, pageSize: 100 });
  const got = new Map<number, EventBatch[]>();
  const unsubs = Array.from({ length: 300 }, (_, i) => {
    const sub = {
      deploymentId: `d${i % 3}`,
      after: '0',
      onBatch: (b: EventBatch) => {
        got.set(i, [...(got.get(i) ?? []), b]);
        sub.after = b.events.at(-1)?.id ?? sub.after;
      },
      onError: () => undefined,
    };
    return hub.subscribe(sub);
  });
  try {
    // Waits for the condition, not for a wall-clock guess (a loaded machine delays timers).
    for (let i = 0; i < 500 && (calls.length < 2 || got.size < 300); i++) await sleep(10);
    expect(calls.length).toBeGreaterThanOrEqual(2);
    // every tick: one query of the three (deployment, cursor) pairs, never one per stream
    for (const c of calls) expect(c.ids).toEqual(['d0', 'd1', 'd2']);
    expect(calls[0]).toEqual({ ids: ['d0', 'd1', 'd2'], after: ['0', '0', '0'] });
    expect(got.get(0)?.[0]?.events.map((e) => e.id)).toEqual(['1']);
    expect(got.size).toBe(300);
  } finally {
    for (const u of unsubs) u();
  }
  expect(hub.size).toBe(0);
  const n = calls.length;
  await sleep(200); // ten poll intervals
  expect(calls.length).toBe(n); // no stream, no query
});

it('ends the streams after five failed polls in a row', async () => {
  let n = 0;
  const rpc = (async () => {
    n += 1;
    throw new Error('db down');
  }) as Rpc;
  const hub = makeEventHub({ rpc, log }, { pollMs: 5, pageSize: 100 });
  let ended = false;
  const unsub = hub.subscribe({
    deploymentId: 'd',
    after: '0',
    onBatch: () => undefined,
    onError: () => (ended = true),
  });
  for (let i = 0; i < 1000 && !ended; i++) await sleep(5);
  expect(ended).toBe(true);
  expect(n).toBe(5);
  unsub();
});

it('an event of a kind this code does not know is left out, the cursor moves past it, and no stream ends (review R12 finding 5)', async () => {
  const calls: string[] = [];
  // the schema is newer than the code: a `future` event among known ones, then one alone
  const pages: Record<string, Record<string, unknown>[]> = {
    '0': [
      { id: '1', deployment_id: 'd', at: 'now', kind: 'future', payload: {} },
      { id: '2', deployment_id: 'd', at: 'now', kind: 'health', payload: { state: 'unhealthy' } },
    ],
    '2': [{ id: '3', deployment_id: 'd', at: 'now', kind: 'future', payload: {} }],
  };
  const rpc = (async (_fn: string, args: Record<string, unknown>) => {
    const after = (args.p_after_ids as string[])[0] ?? '';
    calls.push(after);
    return [
      {
        deployment_id: 'd',
        after_id: after,
        status: 'provisioning',
        settled: true,
        events: pages[after] ?? [],
      },
    ];
  }) as Rpc;
  const warned: unknown[] = [];
  const wlog = { ...log, warn: (o: unknown) => void warned.push(o) } as unknown as typeof log;
  const hub = makeEventHub({ rpc, log: wlog }, { pollMs: 10, pageSize: 100 });
  const got: EventBatch[] = [];
  let ended = false;
  const sub = {
    deploymentId: 'd',
    after: '0',
    onBatch: (b: EventBatch) => {
      got.push(b);
      // as the events route moves its cursor
      sub.after = b.events.at(-1)?.id ?? sub.after;
      sub.after = b.lastId ?? sub.after;
    },
    onError: () => (ended = true),
  };
  const unsub = hub.subscribe(sub);
  try {
    for (let i = 0; i < 500 && !calls.includes('3'); i++) await sleep(10);
    expect(got[0]?.events.map((e) => [e.id, e.kind])).toEqual([['2', 'health']]);
    expect(got[0]?.lastId).toBe('2');
    expect(got[1]?.events).toEqual([]);
    expect(got[1]?.lastId).toBe('3');
    expect(calls.slice(0, 3)).toEqual(['0', '2', '3']);
    expect(ended).toBe(false);
    expect(warned).toEqual([{ kind: 'future' }]);
  } finally {
    unsub();
  }
});
