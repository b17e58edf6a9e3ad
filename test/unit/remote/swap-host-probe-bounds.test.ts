import { spawn } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { helperScriptWithoutBus } from '../../support/swap-helper';

const SWAP_HOST_SCRIPT = helperScriptWithoutBus();

/**
 * Review R2 (issue 11): the helper's `wait-healthy` probe runs as root on the agent's host against
 * whatever listens on the slot's port, which may be a hostile process (the other slot's agent can
 * bind it first: the port-owner check exists for that). The probe must stay bounded whatever that
 * listener does: an answer trickled a byte at a time (headers or body) must not hold the root helper
 * (and the host's swap lock, /run/cortex-swap.lock, which every later swap waits for) past the
 * helper's own deadline, nor make it buffer an unbounded body.
 */
const runHelper = (args: readonly string[], killAfterMs: number) =>
  new Promise<{ code: number | null; stdout: string; ms: number }>((resolve) => {
    const t0 = Date.now();
    const p = spawn('python3', ['-I', '-c', SWAP_HOST_SCRIPT, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), killAfterMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, ms: Date.now() - t0 });
    });
  });

/** `healthy` and the instance that answered (this machine's systemctl, or none: `-`). */
const HEALTHY = /^healthy (-|\d{1,10}:\d{0,20})\n$/;

/** A listener that answers `head` at once, then one byte of `drip` every 200 ms, forever. */
const trickler = async (head: string, drip: string): Promise<{ server: Server; port: number }> => {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.once('data', () => {
      s.write(head);
      const t = setInterval(() => s.write(drip), 200);
      s.on('close', () => {
        clearInterval(t);
        sockets.delete(s);
      });
    });
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const close = server.close.bind(server);
  server.close = (cb) => {
    sockets.forEach((s) => s.destroy());
    return close(cb);
  };
  return { server, port: (server.address() as AddressInfo).port };
};

describe('the host helper: wait-healthy against a hostile listener', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise((r) => server?.close(r) ?? r(undefined));
    server = undefined;
  });

  it('a status line then headers trickled forever: the helper gives up by its deadline (timeout, exit 2)', async () => {
    const t = await trickler('HTTP/1.1 200 OK\r\nX-Slow: ', 'a');
    server = t.server;
    const r = await runHelper(
      ['wait-healthy', 'cortex-agent@green.service', String(t.port), '/health', '1000'],
      15_000,
    );
    // bound: the 1 s deadline plus one probe's own bound (3 s) and slack for a loaded machine
    expect(r.ms).toBeLessThan(8_000);
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/^timeout /);
  }, 20_000);

  it('a 200 whose body is trickled forever: the status is taken without reading the body to its end', async () => {
    const t = await trickler('HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n', 'b');
    server = t.server;
    const r = await runHelper(
      ['wait-healthy', 'cortex-agent@green.service', String(t.port), '/health', '1000'],
      15_000,
    );
    expect(r.ms).toBeLessThan(8_000);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(HEALTHY);
  }, 20_000);

  it.each([
    ['HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok', 0, HEALTHY],
    ['HTTP/1.1 200 OK\r\n\r\n', 0, HEALTHY],
    ['HTTP/1.1 200 OK\nContent-Length: 0\n\n', 0, HEALTHY],
    ['HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n', 2, /^timeout /],
    ['HTTP/1.1 2000 OK\r\n\r\n', 2, /^timeout /],
    ['SSH-2.0-OpenSSH_9.6\r\n\r\n', 2, /^timeout /],
    ['HTTP/1.1 200 OK\r\nX-Unfinished: yes\r\n', 2, /^timeout /],
  ])(
    'a listener that answers %j and closes: exit %d',
    async (answer, code, stdout) => {
      const sockets = new Set<Socket>();
      let request = '';
      server = createServer((s) => {
        sockets.add(s);
        s.on('error', () => undefined);
        s.once('data', (b: Buffer) => {
          request = b.toString('latin1');
          s.end(answer);
        });
      });
      await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
      const port = (server.address() as AddressInfo).port;
      const r = await runHelper(
        ['wait-healthy', 'cortex-agent@green.service', String(port), '/health', '700'],
        15_000,
      );
      expect(r.code).toBe(code);
      if (typeof stdout === 'string') expect(r.stdout).toBe(stdout);
      else expect(r.stdout).toMatch(stdout);
      expect(request).toMatch(/^GET \/health HTTP\/1\.[01]\r\n/);
    },
    20_000,
  );
});
