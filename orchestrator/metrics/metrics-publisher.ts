import type { Redis } from 'ioredis';
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';

/**
 * How a worker's metrics reach the one scrape the API serves: every `everyMs` the worker writes its
 * registry (prom-client's JSON form) to `<prefix>:metrics:process:<holder>` with a TTL of a few
 * periods, and once more when it stops. The API reads every such key at scrape time and labels each
 * series with `process="<holder>"`: a worker that stops takes its own series away with it (its key
 * expires), rather than making a summed counter go backwards, which Prometheus would read as a reset.
 * At most one period of counts is lost when a worker dies without stopping. The keys hold counts and
 * label values only (names and outcomes; never an id or a value), like the job payloads.
 */
export const METRICS_KEY_PART = 'metrics:process';
export const PUBLISH_EVERY_MS = 5_000;

export const metricsKey = (prefix: string, holder: string): string =>
  `${prefix}:${METRICS_KEY_PART}:${holder}`;

export const startMetricsPublisher = (deps: {
  redis: Pick<Redis, 'set'>;
  registry: Registry;
  prefix: string;
  holder: string;
  everyMs?: number;
  onError?: (err: unknown) => void;
}): { publish: () => Promise<void>; stop: () => Promise<void> } => {
  const every = deps.everyMs ?? PUBLISH_EVERY_MS;
  const key = metricsKey(deps.prefix, deps.holder);
  const ttlSeconds = Math.max(15, Math.ceil((every * 4) / 1000));
  const publish = async (): Promise<void> => {
    const json = await deps.registry.getMetricsAsJSON();
    await deps.redis.set(key, JSON.stringify(json), 'EX', ttlSeconds);
  };
  const timer = setInterval(() => {
    publish().catch((err: unknown) => deps.onError?.(err));
  }, every);
  timer.unref();
  return {
    publish,
    stop: async () => {
      clearInterval(timer);
      await publish().catch((err: unknown) => deps.onError?.(err));
    },
  };
};

export type PublishedMetrics = MetricObjectWithValues<MetricValue<string>>[];

/** Parse one published snapshot defensively (Redis is shared): anything malformed is dropped. */
export const parsePublished = (text: string | null, process: string): PublishedMetrics | undefined => {
  if (!text || text.length > 4 * 1024 * 1024) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(raw)) return undefined;
  const out: PublishedMetrics = [];
  for (const m of raw as unknown[]) {
    const o = m as Partial<MetricObjectWithValues<MetricValue<string>>>;
    if (
      typeof o.name !== 'string' ||
      !/^cortex_[a-zA-Z0-9_]+$/.test(o.name) ||
      typeof o.help !== 'string' ||
      typeof o.type !== 'string' ||
      !Array.isArray(o.values)
    )
      continue;
    const values = o.values
      .filter((v) => typeof v.value === 'number' && typeof v.labels === 'object' && v.labels !== null)
      .map((v) => ({ ...v, labels: { ...v.labels, process } }));
    out.push({ ...(o as MetricObjectWithValues<MetricValue<string>>), values });
  }
  return out;
};
