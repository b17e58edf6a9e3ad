import { runCommand } from '../command';
import { OrchestratorError } from '../errors';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  parseIpv4,
  parseIpv6,
  parseRecordInput,
  parseRecordName,
  type DnsProvider,
  type DnsRecord,
  type DnsRecordInput,
} from './dns-provider';

/**
 * Runs knotc with an argv (never a shell line); resolves with its exit code and both outputs.
 * With `input`, knotc gets no action and reads one command per line from stdin (its interactive
 * mode, one answer line per command; used for the edits of one transaction).
 */
export type KnotcRunner = (
  args: readonly string[],
  input?: string,
) => Promise<{ code: number; output: string }>;

export const makeKnotcRunner =
  (opts: { socket: string; binary?: string; timeoutMs?: number }): KnotcRunner =>
  async (args, input) => {
    // Its own process group (runCommand): a stop signal sent to the worker's group must not cut a
    // zone edit half-way.
    const r = await runCommand(opts.binary ?? 'knotc', ['-x', '-s', opts.socket, '-t', '10', ...args], {
      timeoutMs: opts.timeoutMs ?? 15_000,
      input: input ?? '',
    });
    // knotc prints some errors on stdout, some on stderr: both are read.
    const output = `${r.stdout}${r.stderr}`;
    if (r.code !== null) return { code: r.code, output };
    throw new OrchestratorError(
      'provider_unavailable',
      `knotc could not run (${r.failure === 'timeout' ? 'timed out' : (r.failure ?? 'killed')}); is knot-dnsutils installed?`,
    );
  };

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
  const readNode = async (name: string): Promise<ParsedNode | undefined> => {
    const { code, output } = await deps.knotc(['zone-read', zone, `${name}.`]);
    if (code !== 0) {
      if (NO_NODE.test(output)) return undefined;
      throw failure(output, 'zone-read');
    }
    return parseZoneRead(output).get(name);
  };

  /**
   * The edits of one transaction in one knotc process (one answer line per command). knotc goes on
   * after a failed command, so every answer is checked before the commit: only the leading unset may
   * fail, and only with "no such node" (a name not there yet).
   */
  const batch = async (commands: readonly (readonly string[])[]): Promise<boolean> => {
    for (const c of commands)
      if (c.some((word) => !/^[!-~]+$/.test(word)))
        throw new OrchestratorError('internal', 'a knotc word must be printable ASCII without spaces');
    const { output } = await deps.knotc([], commands.map((c) => `${c.join(' ')}\n`).join(''));
    const lines = output.split('\n').filter((l) => l.trim() !== '');
    // One answer per command, in order: only an unset may fail, and only with "no such node"
    // (a name not there yet); anything else, or a missing answer, aborts the transaction.
    const bad = commands.findIndex((c, i) => {
      const answer = lines[i]?.trim();
      if (answer === 'OK') return false;
      return !(c[0] === 'zone-unset' && answer !== undefined && NO_NODE.test(answer));
    });
    if (bad < 0 && lines.length === commands.length) return true;
    throw new OrchestratorError(
      'provider_rejected',
      `local DNS edit failed: ${firstError(lines.filter((l) => l.trim() !== 'OK').join('\n'))}`,
    );
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

  /**
   * Edits are applied in groups: whatever queued while a transaction was open goes into the next
   * one (one zone read, one begin, one batch, one commit), so twenty deployments at once cost a few
   * knotc runs, not a hundred. A group that fails is retried edit by edit, so a bad edit fails only
   * its own caller. An edit already in place opens no transaction (the zone's serial stays).
   */
  type Edit = { readonly name: string; readonly record?: DnsRecordInput };
  const waiting: { edit: Edit; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let pumping = false;

  const applyGroup = async (edits: readonly Edit[]): Promise<void> => {
    const only = edits.length === 1 ? edits[0] : undefined;
    const current = only
      ? new Map<string, ParsedNode>(
          await readNode(only.name).then((n) => (n ? [[only.name, n] as const] : [])),
        )
      : parseZoneRead(await knotc(['zone-read', zone], 'zone-read'));
    const todo = edits.filter((e) =>
      e.record ? !sameRecord(current.get(e.name), e.record) : current.has(e.name),
    );
    if (todo.length === 0) return; // already so: nothing opened, nothing written
    await transaction(() =>
      batch(
        todo.flatMap((e): string[][] => {
          const fqdn = `${e.name}.`;
          const unset = ['zone-unset', zone, fqdn]; // the whole node: old addresses, owner, strays
          if (!e.record) return [unset];
          return [
            unset,
            ['zone-set', zone, fqdn, ttl, 'A', e.record.ipv4],
            ...(e.record.ipv6 ? [['zone-set', zone, fqdn, ttl, 'AAAA', e.record.ipv6]] : []),
            ['zone-set', zone, fqdn, ttl, 'TXT', `"deployment=${e.record.deploymentId}"`],
          ];
        }),
      ),
    );
  };

  const pump = async (): Promise<void> => {
    pumping = true;
    try {
      while (waiting.length > 0) {
        const group = waiting.splice(0, 100);
        try {
          await applyGroup(group.map((g) => g.edit));
          for (const g of group) g.resolve();
        } catch (err) {
          if (group.length === 1) group[0]?.reject(err);
          else
            for (const g of group)
              await applyGroup([g.edit]).then(
                () => g.resolve(),
                (e: unknown) => g.reject(e),
              );
        }
      }
    } finally {
      pumping = false;
    }
  };

  const submit = (edit: Edit): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      waiting.push({ edit, resolve, reject });
      if (!pumping) void pump();
    });

  return {
    name: 'local',

    ensureRecord: async (input: DnsRecordInput) => {
      const r = parseRecordInput(zone, input);
      await submit({ name: r.name, record: r });
    },

    removeRecord: async (raw: string) => {
      await submit({ name: parseRecordName(zone, raw) });
    },

    lookup: async (raw: string) => {
      const name = parseRecordName(zone, raw);
      const r = await readNode(name);
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

const sameRecord = (now: ParsedNode | undefined, r: DnsRecordInput): boolean =>
  now !== undefined &&
  now.ipv4 === r.ipv4 &&
  now.ipv6 === r.ipv6 &&
  now.deploymentId === r.deploymentId &&
  now.extra === 0;

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
