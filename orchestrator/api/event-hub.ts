import type { Rpc } from '../db/rpc';
import type { Logger } from '../log';
import { reasonOf } from '../steps/step-runner';
import { streamEventsOf, type DeploymentEvent } from '../webhooks/webhook-store';

/**
 * Live progress for the API's event streams: ONE poller per API process. Every `pollMs` it asks
 * Postgres, in ONE query (deployment_events__poll), for the events after each open stream's cursor
 * — so a thousand open streams cost one query per tick and one pooled connection while it runs,
 * not a thousand. Streams of the same deployment at the same cursor share their entry. No stream,
 * no timer: the poller stops when the last stream closes and starts with the next one.
 *
 * Polling rather than LISTEN/NOTIFY: LISTEN needs a dedicated connection per process outside the
 * pool (and does not pass through PostgREST or poolers in transaction mode); a 400 ms poll of an
 * indexed table is cheap, and the event log is the source of truth either way.
 */
export interface EventBatch {
  readonly status: string;
  /** No step of the current run is still being written (deployment_events__settled). */
  readonly settled: boolean;
  readonly events: readonly DeploymentEvent[];
  /** The page was full: more events may follow at once. */
  readonly more: boolean;
  /**
   * The id of the page's last event, also when it is of a kind this code does not know and was
   * left out of `events` (streamEventsOf): the stream's cursor moves to it.
   */
  readonly lastId?: string;
}

export interface Subscription {
  /** Events after `after` (the id the stream sent last). */
  readonly deploymentId: string;
  after: string;
  readonly onBatch: (b: EventBatch) => void;
  readonly onError: (err: unknown) => void;
}

const MAX_PER_QUERY = 1000;

/** The final states a stream ends at (a later retry or deprovision starts a new stream). */
export const FINAL_STATUSES: ReadonlySet<string> = new Set(['ready', 'failed', 'deleted']);

export const makeEventHub = (deps: { rpc: Rpc; log: Logger }, s: { pollMs: number; pageSize: number }) => {
  const subs = new Set<Subscription>();
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let failures = 0;
  /** Kinds already warned about (once per process). */
  const unknownKinds = new Set<string>();

  const tick = async (): Promise<void> => {
    const open = [...subs];
    const pairs = new Map<string, { deploymentId: string; after: string }>();
    for (const sub of open)
      pairs.set(`${sub.deploymentId}/${sub.after}`, { deploymentId: sub.deploymentId, after: sub.after });
    const all = [...pairs.values()];
    for (let i = 0; i < all.length; i += MAX_PER_QUERY) {
      const chunk = all.slice(i, i + MAX_PER_QUERY);
      const rows = await deps.rpc<Record<string, unknown>[]>('deployment_events__poll', {
        p_deployment_ids: chunk.map((c) => c.deploymentId),
        p_after_ids: chunk.map((c) => c.after),
        p_limit: s.pageSize,
      });
      const byPair = new Map<string, EventBatch>();
      for (const r of rows) {
        const rows = r.events as Record<string, unknown>[];
        const { events, lastId, unknown } = streamEventsOf(rows);
        for (const kind of unknown)
          if (!unknownKinds.has(kind)) {
            unknownKinds.add(kind);
            deps.log.warn(
              { kind },
              'deployment events of a kind this code does not know are left out of streams',
            );
          }
        byPair.set(`${String(r.deployment_id)}/${String(r.after_id)}`, {
          status: String(r.status),
          settled: r.settled === true,
          events,
          more: rows.length >= s.pageSize,
          ...(lastId === undefined ? {} : { lastId }),
        });
      }
      for (const sub of open) {
        const b = byPair.get(`${sub.deploymentId}/${sub.after}`);
        if (b && subs.has(sub)) sub.onBatch(b);
      }
    }
  };

  const schedule = (): void => {
    if (timer || subs.size === 0) return;
    timer = setTimeout(() => {
      timer = undefined;
      if (running) return schedule();
      running = true;
      tick()
        .then(() => {
          failures = 0;
        })
        .catch((err: unknown) => {
          failures += 1;
          deps.log.warn({ reason: reasonOf(err), failures }, 'event poll failed');
          // after a few failed polls in a row, streams end (the client reconnects with Last-Event-ID)
          if (failures >= 5) for (const sub of [...subs]) sub.onError(err);
        })
        .finally(() => {
          running = false;
          schedule();
        });
    }, s.pollMs);
  };

  return {
    subscribe(sub: Subscription): () => void {
      subs.add(sub);
      schedule();
      return () => {
        subs.delete(sub);
        if (subs.size === 0 && timer) {
          clearTimeout(timer);
          timer = undefined;
        }
      };
    },
    get size(): number {
      return subs.size;
    },
  };
};
export type EventHub = ReturnType<typeof makeEventHub>;
