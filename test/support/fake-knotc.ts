import type { KnotcRunner } from '../../orchestrator/dns/local-dns';

/**
 * Knot's control protocol as knotc shows it, for one zone: one open transaction per zone
 * ("too many transactions" for a second), zone-get reads the transaction's copy, zone-read the
 * committed one, zone-set/unset edit only inside a transaction, commit bumps the serial.
 * Records are `owner. ttl TYPE data` strings keyed by owner.
 */
export const makeFakeKnotc = (zone: string) => {
  const apex = `${zone}.`;
  let committed = new Map<string, string[]>([
    [apex, [`${apex} 30 SOA localhost. hostmaster.localhost. 1 3600 600 86400 30`]],
  ]);
  let txn: Map<string, string[]> | undefined;
  let serial = 1;
  const calls: string[][] = [];
  let unreachable = false;
  const clone = (m: Map<string, string[]>): Map<string, string[]> =>
    new Map([...m].map(([k, v]) => [k, [...v]]));
  const err = (msg: string) => ({ code: 1, output: `error: (${msg}) [${zone}]\n` });
  const ok = { code: 0, output: 'OK\n' };
  const fqdn = (n: string): string => (n === '@' ? apex : n.endsWith('.') ? n : `${n}.${apex}`);
  const show = (m: Map<string, string[]>, owner?: string) => {
    const entries =
      owner === undefined
        ? [...m]
        : m.has(fqdn(owner))
          ? [[fqdn(owner), m.get(fqdn(owner)) ?? []] as const]
          : [];
    if (owner !== undefined && entries.length === 0) return err('no such node in zone found');
    return { code: 0, output: entries.flatMap(([, rs]) => rs.map((r) => `[${apex}] ${r}\n`)).join('') };
  };

  const run: KnotcRunner = async (args, input) => {
    if (input !== undefined && args.length === 0) {
      // Interactive mode: one command per line, one answer line each, exit 0 whatever happened.
      calls.push(['<stdin>']);
      let output = '';
      for (const line of input.split('\n').filter(Boolean)) output += (await one(line.split(' '))).output;
      return { code: 0, output };
    }
    return one(args);
  };
  const one = (args: readonly string[]): Promise<{ code: number; output: string }> => {
    calls.push([...args]);
    if (unreachable)
      return Promise.resolve({ code: 1, output: "error: failed to connect to socket '/x' (not exists)\n" });
    const [verb, z, owner, ttl, type, ...data] = args;
    if (z !== zone) return Promise.resolve(err('no such zone found'));
    const result = (() => {
      switch (verb) {
        case 'zone-begin':
          if (txn) return { code: 1, output: `error: [${zone}] (too many transactions)\n` };
          txn = clone(committed);
          return ok;
        case 'zone-abort':
          if (!txn) return { code: 1, output: `error: [${zone}] (no active transaction)\n` };
          txn = undefined;
          return ok;
        case 'zone-commit':
          if (!txn) return { code: 1, output: `error: [${zone}] (no active transaction)\n` };
          committed = txn;
          txn = undefined;
          serial += 1;
          return ok;
        case 'zone-read':
          return show(committed, owner);
        case 'zone-get':
          if (!txn) return { code: 1, output: `error: [${zone}] (no active transaction)\n` };
          return show(txn, owner);
        case 'zone-set': {
          if (!txn || !owner || !ttl || !type) return err('invalid');
          if (type === 'A' && !/^\d+\.\d+\.\d+\.\d+$/.test(data.join(' '))) return err('parser failed');
          const key = fqdn(owner);
          txn.set(key, [...(txn.get(key) ?? []), `${key} ${ttl} ${type} ${data.join(' ')}`]);
          return ok;
        }
        case 'zone-unset': {
          if (!txn || !owner) return err('invalid');
          if (!txn.delete(fqdn(owner))) return err('no such node in zone found');
          return ok;
        }
        default:
          return err('unknown command');
      }
    })();
    return Promise.resolve(result);
  };
  return {
    run,
    calls,
    serial: () => serial,
    inTransaction: () => txn !== undefined,
    /** Another process opens a transaction (and, in the crash case, never closes it). */
    openForeignTransaction: () => {
      txn = clone(committed);
    },
    setUnreachable: (v: boolean) => {
      unreachable = v;
    },
    /** Plant a record directly in the committed zone (a leftover, a stray type). */
    plant: (line: string) => {
      const owner = line.split(' ')[0] ?? '';
      committed.set(owner, [...(committed.get(owner) ?? []), line]);
    },
  };
};
