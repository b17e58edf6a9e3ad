import { OrchestratorError } from '../../errors';
import { metrics } from '../../metrics/metrics';

/**
 * The few Hetzner Cloud API calls the orchestrator makes itself, outside Pulumi: the DNS preflight
 * before a server is paid for, finding a stray an interrupted `up` left behind, and the orphan
 * sweep by label. Each is one HTTPS request (a listing: one per page of 50). The token travels
 * only in the Authorization header; no response body is logged or quoted in an error.
 */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{ status: number; json(): Promise<unknown> }>;

export const HCLOUD_API = 'https://api.hetzner.cloud/v1';
export const PAGE_SIZE = 50;

export interface HcloudZone {
  readonly id: number;
  readonly name: string;
  /** `primary` (records managed here) or `secondary` (records come from another primary). */
  readonly mode: string;
}

export interface HcloudLabelled {
  readonly id: number | string;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface HcloudRrset extends HcloudLabelled {
  readonly type: string;
  readonly zone: string;
}

export interface HcloudApi {
  /** The zone of that name in the token's project, or `undefined`. */
  zone(name: string): Promise<HcloudZone | undefined>;
  /** The record set `<name> <type>` of the zone, or `undefined`. */
  rrset(zone: string, name: string, type: string): Promise<HcloudRrset | undefined>;
  /** Servers by exact name and/or label selector, every page. */
  servers(q: { name?: string; labelSelector?: string }): Promise<HcloudLabelled[]>;
  firewalls(q: { name?: string; labelSelector?: string }): Promise<HcloudLabelled[]>;
  rrsets(zone: string, q: { labelSelector: string }): Promise<HcloudRrset[]>;
  /** Lifts delete and rebuild protection; a server already gone is done. */
  unprotectServer(id: number | string): Promise<void>;
  /** Lifts delete and rebuild protection, then deletes; a server already gone is done. */
  deleteServer(id: number | string): Promise<void>;
  deleteFirewall(id: number | string): Promise<void>;
  deleteRrset(zone: string, name: string, type: string): Promise<void>;
  /** Requests made so far (for the README's measurements and the tests). */
  readonly requests: () => number;
}

interface HcloudErrorBody {
  readonly error?: { readonly code?: unknown };
}

const codeOf = (body: unknown): string | undefined => {
  const code = (body as HcloudErrorBody | undefined)?.error?.code;
  return typeof code === 'string' && /^[a-z_]+$/.test(code) ? code : undefined;
};

export const makeHcloudApi = (deps: {
  readonly token: string;
  readonly fetch?: FetchLike;
  readonly base?: string;
  readonly signal?: AbortSignal;
}): HcloudApi => {
  const doFetch: FetchLike = deps.fetch ?? (fetch as unknown as FetchLike);
  const base = deps.base ?? HCLOUD_API;
  let count = 0;

  /** One request; `undefined` for a 404 when `missingOk`. */
  const call = async (
    method: string,
    path: string,
    opts: { body?: unknown; missingOk?: boolean } = {},
  ): Promise<unknown> => {
    if (deps.token === '')
      throw new OrchestratorError(
        'config_invalid',
        'HCLOUD_TOKEN is not set: the Hetzner API cannot be called',
      );
    count++;
    let res: { status: number; json(): Promise<unknown> };
    try {
      res = await doFetch(`${base}${path}`, {
        method,
        headers: {
          Authorization: `Bearer ${deps.token}`,
          ...(opts.body === undefined ? {} : { 'Content-Type': 'application/json' }),
        },
        ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }),
        ...(deps.signal ? { signal: deps.signal } : {}),
      });
    } catch {
      metrics.providerCalls.inc({ provider: 'hcloud', method, status: 'error' });
      throw new OrchestratorError('provider_unavailable', `Hetzner API ${method} ${route(path)}: no answer`);
    }
    metrics.providerCalls.inc({ provider: 'hcloud', method, status: String(res.status) });
    const body: unknown = res.status === 204 ? undefined : await res.json().catch(() => undefined);
    if (res.status >= 200 && res.status < 300) return body;
    const code = codeOf(body);
    if (res.status === 404 && opts.missingOk) return undefined;
    const where = `Hetzner API ${method} ${route(path)}: ${res.status}${code ? ` (${code})` : ''}`;
    if (res.status === 429 || code === 'rate_limit_exceeded')
      throw new OrchestratorError('provider_rate_limited', where);
    if (res.status === 401 || code === 'unauthorized' || code === 'token_readonly')
      throw new OrchestratorError('config_invalid', `${where}; check HCLOUD_TOKEN`);
    if (res.status >= 500 || code === 'locked' || code === 'conflict' || code === 'timeout')
      throw new OrchestratorError('provider_unavailable', where);
    throw new OrchestratorError('provider_rejected', where);
  };

  const pages = async <T>(
    path: string,
    key: string,
    query: Record<string, string | undefined>,
  ): Promise<T[]> => {
    const all: T[] = [];
    for (let page = 1; ; page++) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, v);
      q.set('page', String(page));
      q.set('per_page', String(PAGE_SIZE));
      const body = (await call('GET', `${path}?${q.toString()}`)) as
        { meta?: { pagination?: { next_page?: number | null } } } | undefined;
      const items = (body as Record<string, unknown> | undefined)?.[key];
      if (Array.isArray(items)) all.push(...(items as T[]));
      if (!body?.meta?.pagination?.next_page) return all;
    }
  };

  const labelled = (r: {
    id: number | string;
    name: string;
    labels?: Record<string, string>;
  }): HcloudLabelled => ({
    id: r.id,
    name: r.name,
    labels: r.labels ?? {},
  });
  const enc = encodeURIComponent;

  return {
    async zone(name) {
      const zones = await pages<HcloudZone>('/zones', 'zones', { name });
      return zones.find((z) => z.name === name);
    },
    async rrset(zone, name, type) {
      const body = (await call('GET', `/zones/${enc(zone)}/rrsets/${enc(name)}/${enc(type)}`, {
        missingOk: true,
      })) as
        { rrset?: { id: string; name: string; type: string; labels?: Record<string, string> } } | undefined;
      return body?.rrset ? { ...labelled(body.rrset), type: body.rrset.type, zone } : undefined;
    },
    async servers(q) {
      const list = await pages<HcloudLabelled>('/servers', 'servers', {
        name: q.name,
        label_selector: q.labelSelector,
      });
      return list.map(labelled);
    },
    async firewalls(q) {
      const list = await pages<HcloudLabelled>('/firewalls', 'firewalls', {
        name: q.name,
        label_selector: q.labelSelector,
      });
      return list.map(labelled);
    },
    async rrsets(zone, q) {
      const list = await pages<HcloudLabelled & { type: string }>(`/zones/${enc(zone)}/rrsets`, 'rrsets', {
        label_selector: q.labelSelector,
      });
      return list.map((r) => ({ ...labelled(r), type: r.type, zone }));
    },
    async unprotectServer(id) {
      await call('POST', `/servers/${enc(String(id))}/actions/change_protection`, {
        body: { delete: false, rebuild: false },
        missingOk: true,
      });
    },
    async deleteServer(id) {
      const path = `/servers/${enc(String(id))}`;
      const gone = await call('POST', `${path}/actions/change_protection`, {
        body: { delete: false, rebuild: false },
        missingOk: true,
      });
      if (gone === undefined) return;
      await call('DELETE', path, { missingOk: true });
    },
    async deleteFirewall(id) {
      await call('DELETE', `/firewalls/${enc(String(id))}`, { missingOk: true });
    },
    async deleteRrset(zone, name, type) {
      await call('DELETE', `/zones/${enc(zone)}/rrsets/${enc(name)}/${enc(type)}`, { missingOk: true });
    },
    requests: () => count,
  };
};

/** The path without its query (label selectors and names are not secret, but stay out of messages). */
const route = (path: string): string => path.split('?')[0] ?? path;
