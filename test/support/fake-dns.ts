import { createSocket, type Socket } from 'node:dgram';
import { isIP } from 'node:net';

/**
 * A name server on 127.0.0.1 (UDP, port picked by the kernel) for tests that hand it to a
 * resolver as `127.0.0.1:<port>`. `records` maps a lower-case name to its addresses (A for IPv4,
 * AAAA for IPv6): a known name without an address of the asked family gets an empty NOERROR
 * answer, an unknown name NXDOMAIN. `silent` answers nothing at all, like a hostile zone's server
 * that lets every query time out. `queries` counts what arrived.
 */
export interface FakeDns {
  readonly server: string;
  readonly queries: () => number;
  readonly close: () => Promise<void>;
}

const A = 1;
const AAAA = 28;

const ipBytes = (address: string): Buffer => {
  if (isIP(address) === 4) return Buffer.from(address.split('.').map(Number));
  const [head = '', tail = ''] = address.split('::');
  const groups = (s: string): string[] => (s ? s.split(':') : []);
  const h = groups(head);
  const t = groups(tail);
  const all = address.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
  return Buffer.concat(all.map((g) => Buffer.from([parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff])));
};

/** The question's name (lower case) and type, and where the question ends. */
const question = (msg: Buffer): { name: string; type: number; end: number } => {
  const labels: string[] = [];
  let i = 12;
  while (msg[i] !== 0) {
    const len = msg[i] ?? 0;
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('ascii'));
    i += 1 + len;
  }
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(i + 1), end: i + 5 };
};

const answer = (msg: Buffer, records: Readonly<Record<string, readonly string[]>>): Buffer => {
  const q = question(msg);
  const known = records[q.name];
  const rdatas = (known ?? [])
    .filter((a) => isIP(a) === (q.type === AAAA ? 6 : 4) && (q.type === A || q.type === AAAA))
    .map(ipBytes);
  const header = Buffer.alloc(12);
  msg.copy(header, 0, 0, 2); // id
  header.writeUInt16BE(0x8180 | (known ? 0 : 3), 2); // response, recursion desired+available; NXDOMAIN
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(rdatas.length, 6);
  const rrs = rdatas.map((rdata) => {
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); // the question's name
    rr.writeUInt16BE(q.type, 2);
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(60, 6);
    rr.writeUInt16BE(rdata.length, 10);
    return Buffer.concat([rr, rdata]);
  });
  return Buffer.concat([header, msg.subarray(12, q.end), ...rrs]);
};

export const startFakeDns = async (
  o: { silent: true } | { records: Readonly<Record<string, readonly string[]>> },
): Promise<FakeDns> => {
  const socket: Socket = createSocket('udp4');
  let queries = 0;
  socket.on('message', (msg, from) => {
    queries += 1;
    if ('records' in o) socket.send(answer(msg, o.records), from.port, from.address);
  });
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', () => r()));
  return {
    server: `127.0.0.1:${socket.address().port}`,
    queries: () => queries,
    close: () => new Promise<void>((r) => socket.close(() => r())),
  };
};
