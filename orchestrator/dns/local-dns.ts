import { execFile } from 'node:child_process';
import { OrchestratorError } from '../errors';
import { sleep } from '../infra/local-exec';
import {
  parseIpv4,
  parseIpv6,
  parseRecordInput,
  parseRecordName,
  type DnsProvider,
  type DnsRecord,
  type DnsRecordInput,
} from './dns-provider';

/** Runs knotc with an argv (never a shell line); resolves with its exit code and both outputs. */
export type KnotcRunner = (args: readonly string[]) => Promise<{ code: number; output: string }>;

export const makeKnotcRunner =
  (opts: { socket: string; binary?: string; timeoutMs?: number }): KnotcRunner =>
  (args) =>
    new Promise((resolve, reject) => {
      execFile(
        opts.binary ?? 'knotc',
        ['-s', opts.socket, '-t', '10', ...args],
        { timeout: opts.timeoutMs ?? 15_000, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          // knotc prints some errors on stdout, some on stderr: both are read.
          const output = `${stdout}${stderr}`;
          if (!err) return resolve({ code: 0, output });
          if (typeof err.code === 'number') return resolve({ code: err.code, output });
          reject(
            new OrchestratorError(
              'provider_unavailable',
              `knotc could not run (${err.killed ? 'timed out' : String(err.code)}); is knot-dnsutils installed?`,
              { cause: err },
            ),
          );
        },
      );
    });

export interface LocalDnsDeps {
  /** The zone Knot serves (DNS_ZONE). */
  readonly zone: string;
  readonly knotc: KnotcRunner;
  readonly ttl?: number;
  /**
   * How long a zone transaction held by someone else is waited for before it is taken for the
   * leftover of a crashed process and aborted. Ours last milliseconds.
   */
  readonly staleTransactionMs?: number;
}

const NO_NODE = /no such node in zone found/;
const TXN_BUSY = /too many transactions/;

/**
 * The `local` DNS adapter: records in the Knot DNS server that `services:up` starts, edited through
 * its control socket with knotc zone transactions (begin → read → unset/set → commit, abort on any
 * failure), so a reader never sees a half-replaced record. Knot allows one transaction per zone:
 * calls in this process queue behind each other, and another process's open transaction is waited
 * for (then, past `staleTransactionMs`, aborted as a crash leftover). The owner is kept as a TXT
 * record `deployment=<uuid>` beside the A/AAAA records, for orphan sweeps.
 */
export const makeLocalDns = (deps: LocalDnsDeps): DnsProvider => {
  const zone = deps.zone.toLowerCase();
  const ttl = String(deps.ttl ?? 30);
  const staleMs = deps.staleTransactionMs ?? 15_000;
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn, fn);
    queue = next.catch(() => undefined);
    return next;
  };

  const failure = (output: string, what: string): OrchestratorError =>
    /failed to connect to socket/.test(output)
      ? new OrchestratorError(
          'provider_unavailable',
          `local DNS server unreachable (${what}); run npm run services:up`,
        )
      : new OrchestratorError('provider_rejected', `local DNS ${what} failed: ${firstError(output)}`);

  const knotc = async (args: readonly string[], what: string): Promise<string> => {
    const { code, output } = await deps.knotc(args);
    if (code === 0) return output;
    throw failure(output, what);
  };

  const begin = async (): Promise<void> => {
    const started = Date.now();
    let aborted = false;
    for (;;) {
      const { code, output } = await deps.knotc(['zone-begin', zone]);
      if (code === 0) return;
      if (!TXN_BUSY.test(output)) throw failure(output, 'zone-begin');
      if (!aborted && Date.now() - started > staleMs) {
        await deps.knotc(['zone-abort', zone]);
        aborted = true;
        continue;
      }
      if (Date.now() - started > 2 * staleMs)
        throw new OrchestratorError('timeout', 'local DNS zone stayed locked by another transaction');
      await sleep(25 + Math.floor(Math.random() * 50));
    }
  };

  /** Records of one name as knotc prints them: `[zone.] name. ttl TYPE data`. */
  const readNode = async (verb: 'zone-read' | 'zone-get', name: string): Promise<ParsedNode | undefined> => {
    const { code, output } = await deps.knotc([verb, zone, `${name}.`]);
    if (code !== 0) {
      if (NO_NODE.test(output)) return undefined;
      throw failure(output, verb);
    }
    return parseZoneRead(output).get(name);
  };

  const transaction = async (edit: () => Promise<boolean>): Promise<void> => {
    await begin();
    try {
      const commit = await edit();
      await knotc([commit ? 'zone-commit' : 'zone-abort', zone], commit ? 'zone-commit' : 'zone-abort');
    } catch (err) {
      await deps.knotc(['zone-abort', zone]).catch(() => undefined);
      throw err;
    }
  };

  return {
    name: 'local',

    ensureRecord: async (input: DnsRecordInput) => {
      const r = parseRecordInput(zone, input);
      await serial(() =>
        transaction(async () => {
          const now = await readNode('zone-get', r.name);
          if (
            now?.ipv4 === r.ipv4 &&
            now.ipv6 === r.ipv6 &&
            now.deploymentId === r.deploymentId &&
            now.extra === 0
          )
            return false; // already so: abort, the serial stays
          const fqdn = `${r.name}.`;
          if (now) await knotc(['zone-unset', zone, fqdn], 'zone-unset');
          await knotc(['zone-set', zone, fqdn, ttl, 'A', r.ipv4], 'zone-set A');
          if (r.ipv6) await knotc(['zone-set', zone, fqdn, ttl, 'AAAA', r.ipv6], 'zone-set AAAA');
          await knotc(['zone-set', zone, fqdn, ttl, 'TXT', `"deployment=${r.deploymentId}"`], 'zone-set TXT');
          return true;
        }),
      );
    },

    removeRecord: async (raw: string) => {
      const name = parseRecordName(zone, raw);
      await serial(() =>
        transaction(async () => {
          if (!(await readNode('zone-get', name))) return false;
          await knotc(['zone-unset', zone, `${name}.`], 'zone-unset');
          return true;
        }),
      );
    },

    lookup: async (raw: string) => {
      const name = parseRecordName(zone, raw);
      const r = await readNode('zone-read', name);
      if (!r || (r.ipv4 === undefined && r.ipv6 === undefined)) return undefined;
      return { ...(r.ipv4 ? { ipv4: r.ipv4 } : {}), ...(r.ipv6 ? { ipv6: r.ipv6 } : {}) };
    },

    list: async () => {
      const all = parseZoneRead(await knotc(['zone-read', zone], 'zone-read'));
      return [...all.values()]
        .filter((r) => r.name !== zone && (r.ipv4 !== undefined || r.ipv6 !== undefined))
        .map(({ extra: _extra, ...r }) => r);
    },
  };
};

type ParsedNode = DnsRecord & { extra: number };

/**
 * knotc's `zone-read` lines into one entry per name. Lines that are not an A, AAAA or our TXT
 * count as `extra` (an ensure then rewrites the node, so a stray record does not survive it).
 */
export const parseZoneRead = (output: string): Map<string, ParsedNode> => {
  const nodes = new Map<string, ParsedNode>();
  for (const line of output.split('\n')) {
    const m = /^\[[^\]]+\] (\S+)\. \d+ (\S+) (.+)$/.exec(line.trim());
    if (!m) continue;
    const [, owner = '', type, data = ''] = m;
    const name = owner.toLowerCase();
    const node: ParsedNode = nodes.get(name) ?? { name, extra: 0 };
    const owned = /^"deployment=([0-9a-f-]{36})"$/.exec(data);
    const ipv4 = type === 'A' && node.ipv4 === undefined ? safe(() => parseIpv4(data)) : undefined;
    const ipv6 = type === 'AAAA' && node.ipv6 === undefined ? safe(() => parseIpv6(data)) : undefined;
    const ownerId = type === 'TXT' && node.deploymentId === undefined ? owned?.[1] : undefined;
    if (ipv4 !== undefined) nodes.set(name, { ...node, ipv4 });
    else if (ipv6 !== undefined) nodes.set(name, { ...node, ipv6 });
    else if (ownerId !== undefined) nodes.set(name, { ...node, deploymentId: ownerId });
    else nodes.set(name, { ...node, extra: node.extra + 1 });
  }
  return nodes;
};

const safe = (fn: () => string): string | undefined => {
  try {
    return fn();
  } catch {
    return undefined;
  }
};

/** knotc's error line, without the zone data it may quote (names and addresses only, but short). */
const firstError = (output: string): string => {
  const line = output.split('\n').find((l) => l.startsWith('error:')) ?? 'no reason given';
  const m = /\(([^)]+)\)/.exec(line);
  return m?.[1] ?? 'knotc error';
};
