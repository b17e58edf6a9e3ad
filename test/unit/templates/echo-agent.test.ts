import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { buildUserData, renderUserData, type UserDataInput } from '../../../templates/cloud-init';
import { echoRuntime } from '../../../templates/runtime-profiles';
import { canary } from '../../support/canary';
import { freePort } from '../../support/free-port';

/**
 * The echo agent (templates/runtimes/echo-agent.py) against hostile clients, its drain on SIGTERM,
 * what it logs and what it costs to start. It runs as the unit runs it (`python3 -I … --port=N`);
 * the contract tests of its answers are in runtime-profiles.test.ts.
 */
const AGENT = join(__dirname, '../../../templates/runtimes/echo-agent.py');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Answer {
  /** Everything the server sent until it closed. */
  readonly raw: Buffer;
  readonly status: number;
  readonly headers: string;
  readonly body: string;
  /** Set when the connection ended in an error (a reset) rather than a close. */
  readonly error?: string;
  readonly ms: number;
}

/** Connect, write `chunks` (spaced by `gapMs`), read until the server closes. */
const raw = (
  port: number,
  chunks: (string | Buffer)[],
  opts: { gapMs?: number; host?: string; onConnect?: (s: Socket) => void } = {},
): Promise<Answer> =>
  new Promise((resolve) => {
    const t0 = Date.now();
    const parts: Buffer[] = [];
    const s = connect({ host: opts.host ?? '127.0.0.1', port });
    let error: string | undefined;
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    s.on('close', () => {
      const data = Buffer.concat(parts);
      const text = data.toString('latin1');
      const sep = text.indexOf('\r\n\r\n');
      resolve({
        raw: data,
        status: Number(/^HTTP\/1\.0 (\d{3}) /.exec(text)?.[1] ?? 0),
        headers: sep >= 0 ? text.slice(0, sep) : text,
        body: sep >= 0 ? text.slice(sep + 4) : '',
        ...(error === undefined ? {} : { error }),
        ms: Date.now() - t0,
      });
    });
    s.on('connect', () => {
      opts.onConnect?.(s);
      void (async () => {
        for (const [i, c] of chunks.entries()) {
          if (i > 0 && opts.gapMs) await sleep(opts.gapMs);
          if (s.destroyed) return;
          s.write(c);
        }
      })();
    });
  });

const get = (port: number, path: string, host?: string) =>
  raw(port, [`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`], host === undefined ? {} : { host });

interface Agent {
  readonly child: ChildProcess;
  readonly port: number;
  readonly exited: Promise<number | null>;
  /** What it wrote to stderr so far (read as it comes, so a full pipe never blocks it). */
  stderr(): string;
}

interface StartOptions {
  readonly args?: (port: number) => string[];
  /** Where to probe /health (the address it binds). */
  readonly host?: string;
}

/** Every agent started, killed after each test even when it timed out before the agent answered. */
const running: ChildProcess[] = [];
afterEach(() => {
  for (const child of running.splice(0)) child.kill('SIGKILL');
});
// The machine is shared (a benchmark may be running): generous timeouts, bounds asserted below.
jest.setTimeout(30_000);

const start = async (env: Record<string, string> = {}, opts: StartOptions = {}): Promise<Agent> => {
  const port = await freePort();
  const child = spawn('python3', ['-I', AGENT, ...(opts.args?.(port) ?? [`--port=${port}`])], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.push(child);
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const agent = { child, port, exited, stderr: () => err };
  for (let i = 0; i < 200; i++) {
    if ((await get(port, '/health', opts.host)).status === 200) return agent;
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`echo agent did not answer: ${err}`);
};

const alive = async (a: Agent) => {
  const r = await get(a.port, '/health');
  expect({ status: r.status, exitCode: a.child.exitCode }).toEqual({ status: 200, exitCode: null });
};

describe('echo agent: hostile clients, drain, logs, cost', () => {
  it('answers HTTP/1.0 JSON with no-store, an exact Content-Length and no version in Server', async () => {
    const a = await start({ SOME_KEY: canary() });
    for (const path of ['/health', '/nope', '/slow?ms=x']) {
      const r = await get(a.port, path);
      expect(r.headers).toMatch(/^HTTP\/1\.0 (200 OK|404 Not Found|400 Bad Request)\r\n/);
      expect(r.headers).toMatch(/\r\nContent-Type: application\/json\r\n/);
      expect(r.headers).toMatch(/\r\nCache-Control: no-store\r\n/);
      expect(r.headers).toMatch(/\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n/);
      expect(/\r\nServer: ([^\r]*)/.exec(r.headers)?.[1]).toBe('cortex-echo');
      expect(r.headers).toContain(`\r\nContent-Length: ${Buffer.byteLength(r.body)}`);
      expect(JSON.parse(r.body)).toHaveProperty('status');
    }
    expect(JSON.parse((await get(a.port, '/nope')).body)).toEqual({ status: 'not_found' });
    expect(JSON.parse((await get(a.port, '/slow?ms=x')).body)).toEqual({
      status: 'bad_request',
      error: 'ms must be 0-10000',
    });
  });

  it('reads /slow?ms= as parse_qs(keep_blank_values) did, and refuses anything but 0-10000 in ASCII digits', async () => {
    const a = await start();
    const slept = async (q: string) => {
      const r = await get(a.port, `/slow${q}`);
      return r.status === 200 ? (JSON.parse(r.body) as { sleptMs: number }).sleptMs : r.status;
    };
    expect(await slept('?ms=5&ms=20')).toBe(20); // the last one wins
    expect(await slept('?m%73=7')).toBe(7); // names and values are unquoted
    expect(await slept('?ms=%32%30')).toBe(20);
    expect(await slept('?ms=00010')).toBe(10);
    expect(await slept('?ms=0')).toBe(0);
    expect(await slept('?ms=10000&ms=3#frag')).toBe(3);
    expect(await slept('?x=1&&ms=4')).toBe(4);
    // Blank (keep_blank_values), signed, spaced, non-ASCII digits (Arabic-Indic one, superscript
    // two: Python's isdigit() says yes to both), huge, percent junk: all 400, none a crash.
    for (const q of ['?ms', '?ms=', '?ms=+5', '?ms=%2B5', '?ms=5%20', '?ms=%D9%A1', '?ms=%C2%B2'])
      expect({ q, status: await slept(q) }).toEqual({ q, status: 400 });
    for (const q of ['?ms=10001', `?ms=${'9'.repeat(5000)}`, '?ms=%', '?ms=%zz', '?ms=%%%', '?ms=1%00'])
      expect({ q, status: await slept(q) }).toEqual({ q, status: 400 });
    // No ms at all: 1000.
    const t0 = Date.now();
    expect(await slept('?other=1')).toBe(1000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    await alive(a);
  });

  it('answers 501 to other methods, without resetting a client that sent a body', async () => {
    const a = await start();
    for (const method of ['POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']) {
      const r = await raw(a.port, [
        `${method} /health HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n`,
        Buffer.alloc(40000, 0x61),
      ]);
      expect({ method, status: r.status, error: r.error }).toEqual({ method, status: 501, error: undefined });
      expect(JSON.parse(r.body)).toEqual({ status: 'not_implemented' });
    }
    await alive(a);
  });

  it('never crashes on a malformed request line, odd bytes, % escapes, or a client that goes away', async () => {
    const a = await start();
    const cases: [string | Buffer, number][] = [
      ['garbage\r\n\r\n', 400],
      ['GET /health\r\n\r\n', 400], // HTTP/0.9 is not served
      ['GET /health HTTP/1.1 extra\r\n\r\n', 400],
      ['GET  /health HTTP/1.1\r\n\r\n', 400],
      ['GET\t/health\tHTTP/1.1\r\n\r\n', 400],
      ['\r\n\r\n', 400],
      ['GET /health HTTP/2.0\r\n\r\n', 505],
      ['GET /health FOO/1.1\r\n\r\n', 400],
      ['GET health HTTP/1.1\r\n\r\n', 400],
      ['G\x00T /health HTTP/1.1\r\n\r\n', 400],
      ['GET /health HTTP/1.0\n\n', 200], // bare LF lines
      ['GET http://example/health HTTP/1.1\r\n\r\n', 400], // absolute form: Caddy never sends it
      ['GET * HTTP/1.1\r\n\r\n', 400],
      ['GET /%68ealth HTTP/1.1\r\n\r\n', 404], // the path is compared as sent, as before
      ['GET /%%%zz%ff% HTTP/1.1\r\n\r\n', 404],
      [Buffer.from('GET /\xff\xfe\x1b[31m\x80 HTTP/1.1\r\nX: \xff\xfe\r\n\r\n', 'latin1'), 404],
      [Buffer.from('GET /health HTTP/1.1\r\nHost: \xc3\x28\r\nBad header line\r\n: \r\n\r\n', 'latin1'), 200],
      ['GET /health HTTP/1.1\r\n' + 'X: y\r\n'.repeat(1400) + '\r\n', 431], // 8 KiB head bound
      [`GET /${'a'.repeat(9000)} HTTP/1.1\r\n\r\n`, 414],
      [Buffer.alloc(20_000, 0x41), 414], // no line end: read (and the rest dropped) before closing
    ];
    for (const [req, status] of cases) {
      const r = await raw(a.port, [req]);
      expect({ req: req.toString().slice(0, 60), status: r.status }).toEqual({
        req: req.toString().slice(0, 60),
        status,
      });
      if (status !== 200) expect(JSON.parse(r.body)).toHaveProperty('status');
    }
    // A megabyte without a line end: the connection ends (the client, still writing, may see the
    // reset of a close with unread bytes rather than the 414) and the agent goes on.
    const flood = await raw(a.port, [Buffer.alloc(1 << 20, 0x41)]);
    expect(flood.status === 414 || flood.error !== undefined).toBe(true);
    expect(flood.ms).toBeLessThan(10_000);
    await alive(a);
    // Clients that go away: after half a head, with a reset, during /slow, before reading.
    const gone = [
      raw(a.port, ['GET /heal'], { onConnect: (s) => setTimeout(() => s.end(), 50) }),
      raw(a.port, ['GET /health HTTP/1.1\r\nX: '], {
        onConnect: (s) => setTimeout(() => s.resetAndDestroy(), 50),
      }),
      raw(a.port, ['GET /slow?ms=300 HTTP/1.1\r\n\r\n'], {
        onConnect: (s) => setTimeout(() => s.resetAndDestroy(), 50),
      }),
      raw(a.port, ['GET /health HTTP/1.1\r\n\r\n'], { onConnect: (s) => s.resetAndDestroy() }),
      raw(a.port, []),
    ];
    await sleep(500);
    await alive(a);
    // The last one never sent anything: still open (until the head timeout), not answered.
    expect(a.child.exitCode).toBeNull();
    a.child.kill('SIGKILL');
    await Promise.all(gone);
  });

  it('bounds the time to send a head (slowloris): closed with 408 after 10 s, others served meanwhile', async () => {
    const a = await start();
    // 8.5 s of one byte every 500 ms, then silence (so nothing is left unread when it is closed).
    const dribble = raw(a.port, ['GET /health HTTP/1.1\r\n', ...'X-Slow: abcdefghi'.split('')], {
      gapMs: 500,
    });
    const silent = raw(a.port, ['GET /slow?ms=1 HTTP/1.1\r\nHost: x\r\n']);
    for (let i = 0; i < 5; i++) {
      const t0 = Date.now();
      await alive(a);
      expect(Date.now() - t0).toBeLessThan(3000);
      await sleep(1000);
    }
    for (const r of await Promise.all([dribble, silent])) {
      expect(r.status).toBe(408);
      expect(r.ms).toBeGreaterThanOrEqual(9500);
      expect(r.ms).toBeLessThan(16_000);
    }
    await alive(a);
  });

  it('holds at most 512 client connections; the rest wait in the backlog and are served later', async () => {
    const a = await start();
    const pid = a.child.pid ?? 0;
    const socketsOpen = () =>
      readdirSync(`/proc/${pid}/fd`).filter((fd) => {
        try {
          return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:');
        } catch {
          return false; // closed meanwhile
        }
      }).length;
    // The listening socket and stderr (Node's stdio pipes are socket pairs).
    const before = socketsOpen();
    const idle: Socket[] = [];
    for (let i = 0; i < 530; i++) {
      const s = connect({ host: '127.0.0.1', port: a.port });
      s.on('error', () => undefined);
      s.write('GET /health HTTP/1.1\r\n');
      idle.push(s);
    }
    await sleep(1000);
    expect(socketsOpen() - before).toBeLessThanOrEqual(512);
    expect(socketsOpen() - before).toBeGreaterThanOrEqual(500);
    const waiting = get(a.port, '/health');
    await sleep(200);
    for (const s of idle.slice(0, 100)) s.destroy();
    expect((await waiting).status).toBe(200);
    for (const s of idle) s.destroy();
  });

  it('/slow cannot starve /health (review R10 F1): clients that hang up free their place at once, and at most 256 wait', async () => {
    const a = await start();
    // 512 clients ask for a 10 s /slow and hang up at once: their places are freed, not held 10 s.
    const gone: Promise<Answer>[] = [];
    for (let i = 0; i < 512; i++)
      gone.push(
        raw(a.port, ['GET /slow?ms=10000 HTTP/1.1\r\n\r\n'], {
          onConnect: (s) => setTimeout(() => s.destroy(), 50),
        }),
      );
    await Promise.all(gone);
    await sleep(300);
    const t0 = Date.now();
    expect((await get(a.port, '/health')).status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(3_000);
    // 300 clients wait in /slow and stay: 256 are held, the rest answered 503 at once, and /health
    // is still served meanwhile.
    const held = Array.from({ length: 300 }, () => get(a.port, '/slow?ms=4000'));
    await sleep(1_000);
    const t1 = Date.now();
    expect((await get(a.port, '/health')).status).toBe(200);
    expect(Date.now() - t1).toBeLessThan(3_000);
    const answers = await Promise.all(held);
    const count = (status: number) => answers.filter((r) => r.status === status).length;
    expect({ ok: count(200), busy: count(503) }).toEqual({ ok: 256, busy: 44 });
    expect(answers.find((r) => r.status === 503)?.body).toBe('{"status": "service_unavailable"}');
  });

  it('on SIGTERM serves what was queued and in flight (a /slow included), refuses new clients, bounds a slowloris to 2 s, exits 0', async () => {
    const a = await start();
    const slow = get(a.port, '/slow?ms=1500');
    // Connected before the SIGTERM, its request sent only after it.
    let late!: Socket;
    const lateAnswer = raw(a.port, [], { onConnect: (s) => (late = s) });
    const loris = raw(a.port, ['GET /health HTTP/1.1\r\n']);
    await sleep(300);
    // Connected while the agent was stopped: still in the kernel's accept queue at the SIGTERM.
    a.child.kill('SIGSTOP');
    const queued = raw(a.port, ['GET /slow?ms=10 HTTP/1.1\r\n\r\n']);
    await sleep(200);
    const t0 = Date.now();
    a.child.kill('SIGTERM');
    a.child.kill('SIGCONT');
    await sleep(300);
    late.write('GET /health HTTP/1.1\r\n\r\n');
    const refused = await get(a.port, '/health');
    expect(refused.error).toBe('ECONNREFUSED');
    expect((await lateAnswer).status).toBe(200);
    expect((await queued).status).toBe(200);
    const s = await slow;
    expect({ status: s.status, body: JSON.parse(s.body) as unknown }).toEqual({
      status: 200,
      body: { status: 'ok', sleptMs: 1500 },
    });
    expect((await loris).status).toBe(408);
    expect(await a.exited).toBe(0);
    // Without the 2 s bound the loris would hold the drain until its 10 s ran out.
    expect(Date.now() - t0).toBeLessThan(8000);
    expect(a.stderr()).toContain('cortex echo agent stopped');
  });

  it('logs method, path and status only: no query, no header, no body, no successful /health', async () => {
    const key = canary();
    const a = await start({ ANTHROPIC_API_KEY: key });
    for (let i = 0; i < 5; i++) await get(a.port, '/health');
    await raw(a.port, [
      `GET /other?token=${key} HTTP/1.1\r\nAuthorization: Bearer ${key}\r\nCookie: ${key}\r\n\r\n`,
    ]);
    await raw(a.port, [`POST /health HTTP/1.1\r\nContent-Length: ${key.length}\r\n\r\n${key}`]);
    await raw(a.port, [Buffer.from('GET /\x1b[2J\xff HTTP/1.1\r\n\r\n', 'latin1')]);
    await get(a.port, '/slow?ms=1');
    await raw(a.port, ['nonsense\r\n\r\n']);
    await sleep(100);
    const lines = a
      .stderr()
      .split('\n')
      .filter((l) => l && !l.startsWith('cortex echo agent'));
    expect(lines).toEqual([
      'GET /other 404',
      'POST /health 501',
      'GET /\\x1b[2J\\xff 404',
      'GET /slow 200',
      '- - 400',
    ]);
    expect(a.stderr()).not.toContain(key);
    expect(a.stderr()).not.toContain('\x1b');
  });

  it('refuses bad arguments with a usage message, takes --bind', async () => {
    const run = (...args: string[]) => spawnSync('python3', ['-I', AGENT, ...args], { encoding: 'utf8' });
    for (const [args, msg] of [
      [[], /--port is required/],
      [['--port=abc'], /--port must be a number from 1 to 65535, not 'abc'/],
      [['--port=0'], /--port must be/],
      [['--port=65536'], /--port must be/],
      [['--port=٣'], /--port must be/],
      [['--port'], /unknown argument '--port'/],
      [['--port', '80'], /unknown argument '--port'/],
      [['--port=1', '--bind=localhost'], /--bind must be an IPv4 or IPv6 address/],
      [['--port=1', '--verbose'], /unknown argument/],
    ] as const) {
      const r = run(...args);
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
      expect(r.stderr).toMatch(/^usage: echo-agent\.py --port=N \[--bind=ADDRESS\]\n/);
      expect(r.stderr).toMatch(msg);
    }
    // The default bind is 127.0.0.1 (the unit passes none): 127.0.0.2, also loopback, is refused;
    // told to bind 127.0.0.2, it is the other way round.
    const a = await start();
    expect((await get(a.port, '/health', '127.0.0.2')).error).toBe('ECONNREFUSED');
    const b = await start({}, { args: (p) => [`--port=${p}`, '--bind=127.0.0.2'], host: '127.0.0.2' });
    expect((await get(b.port, '/health', '127.0.0.2')).status).toBe(200);
    expect((await get(b.port, '/health')).error).toBe('ECONNREFUSED');
  });

  it('starts without the costly modules: no http.server, email, json, re, enum, socket, signal, threading, argparse', async () => {
    const port = await freePort();
    // -S: without site, whose .pth files may import any of these first on a dev machine.
    const child = spawn('python3', ['-I', '-S', '-X', 'importtime', AGENT, `--port=${port}`], {
      env: {},
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    running.push(child);
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    for (let i = 0; i < 100 && (await get(port, '/health')).status !== 200; i++) await sleep(50);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const imported = new Set(
      err
        .split('\n')
        .map((l) => /^import time:\s+\d+ \|\s+\d+ \| +(\S+)$/.exec(l)?.[1])
        .filter((m): m is string => m !== undefined),
    );
    expect(imported.has('_json')).toBe(true); // the parse above did see the imports
    for (const m of [
      'http.server',
      'email',
      'json',
      're',
      'enum',
      'socket',
      'signal',
      'threading',
      'argparse',
    ])
      expect({ m, imported: imported.has(m) }).toEqual({ m, imported: false });
  });

  it('still fits, with everything else a host gets, in the 32 KiB of Hetzner user data', () => {
    const input = {
      hostname: 'a1b2',
      siteName: 'a1b2.agents.example.com',
      hostKey: generateHostKeyPair(),
      orchestratorPublicKey: generateHostKeyPair().publicKey,
      tls: { mode: 'internal' },
      runtime: echoRuntime(),
      metadataBlock: 'required',
      installPackages: true,
    } as UserDataInput;
    const bytes = Buffer.byteLength(renderUserData(buildUserData(input)).reveal());
    expect(bytes).toBeLessThan(32 * 1024);
  });
});
