import type { FetchLike } from '../../orchestrator/infra/hcloud';
import type { ProviderModel, RegisteredResource } from './fake-workspace';

/**
 * An in-memory Hetzner Cloud project behind the real API's contract (the subset the orchestrator
 * and the hcloud Pulumi provider use): servers, firewalls, DNS zones and record sets, names unique
 * per project (`uniqueness_error`), delete protection (`protected`), 404 `not_found`, label
 * selectors (`k=v`, comma = and) and pagination (`page`, `per_page` ≤ 50, `meta.pagination`).
 *
 * It is both the `fetch` of `makeHcloudApi` and the `ProviderModel` of the fake workspace, so a
 * server the fake `pulumi up` creates is one the API lists, and a server deleted "by hand" here is
 * one the next `pulumi destroy` fails to delete — as with the real provider.
 */
export interface FakeServer {
  id: number;
  name: string;
  labels: Record<string, string>;
  protection: { delete: boolean; rebuild: boolean };
  serverType: string;
  location: string;
  image: string;
}
export interface FakeFirewall {
  id: number;
  name: string;
  labels: Record<string, string>;
}
export interface FakeSshKey {
  id: number;
  name: string;
  publicKey: string;
}
export interface FakeZone {
  id: number;
  name: string;
  mode: 'primary' | 'secondary';
}
export interface FakeRrset {
  zone: string;
  name: string;
  type: string;
  labels: Record<string, string>;
}

export interface FakeHcloudApi {
  readonly fetch: FetchLike;
  readonly provider: ProviderModel;
  readonly servers: Map<number, FakeServer>;
  readonly firewalls: Map<number, FakeFirewall>;
  /** Names and public keys are each unique per project. */
  readonly sshKeys: Map<number, FakeSshKey>;
  readonly zones: Map<string, FakeZone>;
  /** Keyed `zone/name/type`. */
  readonly rrsets: Map<string, FakeRrset>;
  /** Every request, as `METHOD path?query`. */
  readonly requests: string[];
  addZone(name: string, mode?: 'primary' | 'secondary'): void;
}

const SERVER = 'hcloud:index/server:Server';
const FIREWALL = 'hcloud:index/firewall:Firewall';
const RRSET = 'hcloud:index/zoneRrset:ZoneRrset';
const SSH_KEY = 'hcloud:index/sshKey:SshKey';

const json = (status: number, body?: unknown) => ({
  status,
  json: async () => body,
});
const apiError = (status: number, code: string, message: string) =>
  json(status, { error: { code, message, details: {} } });

const matches = (labels: Record<string, string>, selector: string | null): boolean =>
  selector === null ||
  selector.split(',').every((term) => {
    const [k, v] = term.split('=');
    return k !== undefined && (v === undefined ? k in labels : labels[k] === v);
  });

let nextZoneId = 77_000;

export const makeFakeHcloudApi = (opts: { zones?: string[] } = {}): FakeHcloudApi => {
  const servers = new Map<number, FakeServer>();
  const firewalls = new Map<number, FakeFirewall>();
  const sshKeys = new Map<number, FakeSshKey>();
  const zones = new Map<string, FakeZone>();
  const rrsets = new Map<string, FakeRrset>();
  const requests: string[] = [];
  const addZone = (name: string, mode: 'primary' | 'secondary' = 'primary'): void =>
    void zones.set(name, { id: nextZoneId++, name, mode });
  for (const z of opts.zones ?? []) addZone(z);

  const page = <T>(key: string, items: T[], q: URLSearchParams) => {
    const per = Math.min(50, Number(q.get('per_page') ?? '25'));
    const n = Number(q.get('page') ?? '1');
    const last = Math.max(1, Math.ceil(items.length / per));
    return json(200, {
      [key]: items.slice((n - 1) * per, n * per),
      meta: {
        pagination: {
          page: n,
          per_page: per,
          previous_page: n > 1 ? n - 1 : null,
          next_page: n < last ? n + 1 : null,
          last_page: last,
          total_entries: items.length,
        },
      },
    });
  };

  const fetch: FetchLike = async (url, init) => {
    const u = new URL(url);
    const path = u.pathname.replace(/^\/v1/, '');
    requests.push(`${init.method} ${path}${u.search}`);
    if (!/^Bearer [0-9a-zA-Z]{64}$/.test(init.headers['Authorization'] ?? ''))
      return apiError(401, 'unauthorized', 'unable to authenticate');
    const q = u.searchParams;
    const seg = path.split('/').filter(Boolean).map(decodeURIComponent);
    const m = init.method;
    if (seg[0] === 'servers') {
      if (seg.length === 1 && m === 'GET')
        return page(
          'servers',
          [...servers.values()].filter(
            (s) =>
              (q.get('name') === null || s.name === q.get('name')) &&
              matches(s.labels, q.get('label_selector')),
          ),
          q,
        );
      const s = servers.get(Number(seg[1]));
      if (!s) return apiError(404, 'not_found', 'server not found');
      if (seg[2] === 'actions' && seg[3] === 'change_protection' && m === 'POST') {
        const body = JSON.parse(init.body ?? '{}') as { delete?: boolean; rebuild?: boolean };
        s.protection = {
          delete: body.delete ?? s.protection.delete,
          rebuild: body.rebuild ?? s.protection.rebuild,
        };
        return json(201, { action: { id: 1, status: 'running' } });
      }
      if (seg.length === 2 && m === 'DELETE') {
        if (s.protection.delete) return apiError(403, 'protected', 'server is delete protected');
        servers.delete(s.id);
        return json(200, { action: { id: 2, status: 'running' } });
      }
    }
    if (seg[0] === 'firewalls') {
      if (seg.length === 1 && m === 'GET')
        return page(
          'firewalls',
          [...firewalls.values()].filter(
            (f) =>
              (q.get('name') === null || f.name === q.get('name')) &&
              matches(f.labels, q.get('label_selector')),
          ),
          q,
        );
      if (seg.length === 2 && m === 'DELETE') {
        if (!firewalls.delete(Number(seg[1]))) return apiError(404, 'not_found', 'firewall not found');
        return json(204);
      }
    }
    if (seg[0] === 'zones') {
      if (seg.length === 1 && m === 'GET')
        return page(
          'zones',
          [...zones.values()].filter((z) => q.get('name') === null || z.name === q.get('name')),
          q,
        );
      const zone = [...zones.values()].find((z) => z.name === seg[1] || String(z.id) === seg[1]);
      if (!zone) return apiError(404, 'not_found', 'zone not found');
      if (seg[2] === 'rrsets' && seg.length === 3 && m === 'GET')
        return page(
          'rrsets',
          [...rrsets.values()]
            .filter((r) => r.zone === zone.name && matches(r.labels, q.get('label_selector')))
            .map((r) => ({ id: `${r.name}/${r.type}`, ...r })),
          q,
        );
      if (seg[2] === 'rrsets' && seg.length === 5) {
        const key = `${zone.name}/${seg[3]}/${seg[4]}`;
        const r = rrsets.get(key);
        if (!r) return apiError(404, 'not_found', 'rrset not found');
        if (m === 'GET') return json(200, { rrset: { id: `${r.name}/${r.type}`, ...r } });
        if (m === 'DELETE') {
          rrsets.delete(key);
          return json(201, { action: { id: 3, status: 'running' } });
        }
      }
    }
    return apiError(404, 'not_found', 'no such route');
  };

  const inputs = (r: RegisteredResource): Record<string, unknown> => r.inputs as Record<string, unknown>;
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');
  const labelsOf = (r: RegisteredResource): Record<string, string> =>
    (inputs(r).labels as Record<string, string> | undefined) ?? {};
  const rrsetKey = (r: RegisteredResource): string =>
    `${str(inputs(r).zone)}/${str(inputs(r).name)}/${str(inputs(r).type)}`;

  /** What the hcloud provider does for each resource, with the API's own refusals (CLI-shaped). */
  const provider: ProviderModel = {
    create(r) {
      const name = str(inputs(r).name);
      if (r.type === SERVER) {
        if ([...servers.values()].some((s) => s.name === name))
          return `error: creating server: server name is already used (uniqueness_error, 3f1c)`;
        const protect = inputs(r).deleteProtection === true;
        servers.set(Number(r.assignedId), {
          id: Number(r.assignedId),
          name,
          labels: labelsOf(r),
          protection: { delete: protect, rebuild: inputs(r).rebuildProtection === true },
          serverType: str(inputs(r).serverType),
          location: str(inputs(r).location),
          image: str(inputs(r).image),
        });
      } else if (r.type === SSH_KEY) {
        const publicKey = str(inputs(r).publicKey);
        if ([...sshKeys.values()].some((k) => k.name === name || k.publicKey === publicKey))
          return `error: creating ssh key: SSH key with the same name or fingerprint already exists (uniqueness_error, 3f24)`;
        sshKeys.set(Number(r.assignedId), { id: Number(r.assignedId), name, publicKey });
      } else if (r.type === FIREWALL) {
        if ([...firewalls.values()].some((f) => f.name === name))
          return `error: creating firewall: name is already used (uniqueness_error, 3f1d)`;
        firewalls.set(Number(r.assignedId), { id: Number(r.assignedId), name, labels: labelsOf(r) });
      } else if (r.type === RRSET) {
        const key = rrsetKey(r);
        if (!zones.has(str(inputs(r).zone))) return `error: creating rrset: zone not found (not_found, 3f1e)`;
        if (rrsets.has(key)) return `error: creating rrset: rrset already exists (uniqueness_error, 3f1f)`;
        rrsets.set(key, {
          zone: str(inputs(r).zone),
          name: str(inputs(r).name),
          type: str(inputs(r).type),
          labels: labelsOf(r),
        });
      }
      return undefined;
    },
    update(before, after) {
      if (after.type !== SERVER) return undefined;
      const s = servers.get(Number(before.assignedId));
      if (!s) return `error: updating server: server not found (not_found, 3f20)`;
      s.protection = {
        delete: inputs(after).deleteProtection === true,
        rebuild: inputs(after).rebuildProtection === true,
      };
      s.serverType = str(inputs(after).serverType);
      return undefined;
    },
    delete(r) {
      if (r.type === SERVER) {
        const s = servers.get(Number(r.assignedId));
        // terraform-provider-hcloud's server delete does not tolerate a 404.
        if (!s) return `error: deleting server: server not found (not_found, 3f21)`;
        if (s.protection.delete)
          return `error: deleting server: server is delete protected (protected, 3f22)`;
        servers.delete(s.id);
      } else if (r.type === FIREWALL) {
        // Its firewall delete dereferences the missing firewall: the plugin crashes.
        if (!firewalls.delete(Number(r.assignedId)))
          return 'error: panic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV: segmentation violation]\nerror: the plugin exited unexpectedly';
      } else if (r.type === RRSET) {
        rrsets.delete(rrsetKey(r));
      } else if (r.type === SSH_KEY) {
        sshKeys.delete(Number(r.assignedId));
      }
      return undefined;
    },
    exists(r) {
      if (r.type === SERVER) return servers.has(Number(r.assignedId));
      if (r.type === FIREWALL) return firewalls.has(Number(r.assignedId));
      if (r.type === RRSET) return rrsets.has(rrsetKey(r));
      if (r.type === SSH_KEY) return sshKeys.has(Number(r.assignedId));
      return true;
    },
  };

  return { fetch, provider, servers, firewalls, sshKeys, zones, rrsets, requests, addZone };
};
