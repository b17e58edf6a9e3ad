import type { AddressInfo } from 'node:net';
import { Server, utils, type ServerChannel } from 'ssh2';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import {
  connectSsh,
  type LineSession,
  type RemoteShell,
  type SshTarget,
} from '../../../orchestrator/remote/ssh-shell';
import { Secret } from '../../../orchestrator/secret';
import { rejection } from '../../support/rejection';

/**
 * The line session (`openLines`) against a scripted in-process SSH server: each test says what the
 * host does with the exec request (refuse it, accept it late, answer lines, write too much, exit by
 * a signal), so every branch is reached by events, not by timing. ssh-shell.test.ts runs the same
 * session against /bin/sh.
 */
const pair = () => {
  const k = generateHostKeyPair();
  return { private: k.privateKey.reveal(), public: k.publicKey };
};
const hostKey = pair();
const clientKey = pair();

const MAX = 16 * 1024 * 1024; // the adapter's MAX_OUTPUT_BYTES
const isEnd = (l: string): boolean => l === 'end';

type OnExec = (accept: () => ServerChannel, reject: () => void, command: string) => void;

/** An SSH server whose exec requests go to the current test's `onExec`. */
const startScriptedServer = async () => {
  const allowed = utils.parseKey(clientKey.public);
  if (allowed instanceof Error) throw allowed;
  let onExec: OnExec = (_a, reject) => reject();
  const commands: string[] = [];
  const server = new Server({ hostKeys: [hostKey.private] }, (client) => {
    client.on('error', () => undefined);
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || !ctx.key.data.equals(allowed.getPublicSSH()))
        return ctx.reject(['publickey']);
      if (!ctx.signature) return ctx.accept();
      return allowed.verify(ctx.blob as Buffer, ctx.signature, ctx.hashAlgo) ? ctx.accept() : ctx.reject();
    });
    client.on('ready', () =>
      client.on('session', (accept) =>
        accept().on('exec', (acc, rej, info) => {
          commands.push(info.command);
          onExec(acc, rej, info.command);
        }),
      ),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    commands,
    script: (f: OnExec) => void (onExec = f),
    close: () => new Promise((r) => server.close(r)),
  };
};

/** Accept the exec and answer each request line through `answer` (the channel is read in lines). */
const lineHost =
  (answer: (line: string, ch: ServerChannel) => void, opened?: (ch: ServerChannel) => void): OnExec =>
  (accept) => {
    const ch = accept();
    let buf = '';
    ch.on('data', (d: Buffer) => {
      const parts = (buf + d.toString('utf8')).split('\n');
      buf = parts.pop() ?? '';
      for (const l of parts) answer(l, ch);
    });
    opened?.(ch);
  };

/** Resolves once the event happens; fails the test (instead of hanging it) if it does not. */
const happens = (ch: ServerChannel, event: 'close' | 'end', what: string): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no '${event}' within 10 s`)), 10_000);
    ch.once(event, () => (clearTimeout(t), resolve()));
    ch.resume(); // a channel whose input nobody reads never ends, so never closes
  });

/**
 * Whether `p` settles before any I/O: a promise that resolves through microtasks only beats a
 * setImmediate, one that waits for the network (a channel's close) does not.
 */
const atOnce = <T>(p: Promise<T>): Promise<T | 'waited'> =>
  Promise.race([p, new Promise<'waited'>((r) => setImmediate(() => r('waited')))]);

describe('ssh2 line session (openLines) against a scripted host', () => {
  let host: Awaited<ReturnType<typeof startScriptedServer>>;
  let target: SshTarget;
  let shell: RemoteShell | undefined;
  const opts = {
    privateKey: new Secret(clientKey.private),
    connectTimeoutMs: 5_000,
    commandTimeoutMs: 20_000,
  };
  const open = async (o: Parameters<NonNullable<RemoteShell['openLines']>>[1] = {}): Promise<LineSession> => {
    shell = await connectSsh(target, opts);
    return (shell.openLines as NonNullable<RemoteShell['openLines']>)(['helper', '--session'], o);
  };

  beforeAll(async () => {
    host = await startScriptedServer();
    target = { host: '127.0.0.1', port: host.port, hostPublicKey: hostKey.public };
  });
  afterEach(async () => {
    await shell?.close();
    shell = undefined;
  });
  afterAll(async () => {
    await host.close();
  });

  describe('opening', () => {
    it('an aborted signal refuses at once, naming the command, and sends no exec', async () => {
      const before = host.commands.length;
      const ac = new AbortController();
      ac.abort();
      const err = await rejection(open({ signal: ac.signal }));
      expect([err.code, err.message]).toEqual(['aborted', 'remote command helper was aborted']);
      expect(host.commands.length).toBe(before);
    });

    it('a standard input for the whole session is refused naming the field, before any exec (input goes with each request)', async () => {
      const before = host.commands.length;
      const canaryValue = `sk-canary-${Math.random().toString(36).slice(2)}`;
      const err = await rejection(open({ stdin: new Secret(canaryValue) }));
      expect(err.code).toBe('invalid_input');
      expect(err.message).toMatch(/^stdin: /);
      expect(err.message).not.toContain(canaryValue);
      expect(host.commands.length).toBe(before);
    });

    it('an exec the host refuses is ssh_connect_failed naming the host, with the cause kept', async () => {
      host.script((_accept, reject) => reject());
      const err = await rejection(open());
      expect(err.code).toBe('ssh_connect_failed');
      expect(err.cause).toBeInstanceOf(Error);
      expect(err.message).toBe(`127.0.0.1:${host.port}: ${(err.cause as Error).message}`);
    });

    it.each(['abort', 'timeout'] as const)(
      'a channel the host opens after the caller gave up (%s) is closed, not left running',
      async (how) => {
        let late: (() => ServerChannel) | undefined;
        const arrived = new Promise<void>((r) =>
          host.script((accept) => {
            late = accept;
            r();
          }),
        );
        const ac = new AbortController();
        const opening = open(how === 'abort' ? { signal: ac.signal } : { timeoutMs: 200 });
        await arrived; // the exec request is at the host, not yet answered
        if (how === 'abort') ac.abort();
        const err = await rejection(opening);
        expect([err.code, err.message]).toEqual(
          how === 'abort'
            ? ['aborted', 'remote command helper was aborted']
            : ['ssh_timeout', 'remote command helper did not finish within 200 ms'],
        );
        const ch = (late as () => ServerChannel)();
        await happens(ch, 'close', 'the late channel');
      },
    );
  });

  describe('asking', () => {
    it('a second request while one is pending is refused (internal, naming the command); the first still gets its answer and the session goes on', async () => {
      host.script(lineHost((l, ch) => ch.write(`got ${l}\nend\n`)));
      const s = await open();
      const first = s.ask(Buffer.from('one\n'), isEnd);
      const err = await rejection(s.ask(Buffer.from('two\n'), isEnd));
      expect([err.code, err.message]).toEqual(['internal', 'helper: one request at a time']);
      expect(await first).toEqual({ lines: ['got one', 'end'], ended: false });
      expect(await s.ask(Buffer.from('three\n'), isEnd)).toEqual({
        lines: ['got three', 'end'],
        ended: false,
      });
    });

    it('output nobody asked for (lines after a last line) answers no request', async () => {
      host.script(lineHost((l, ch) => ch.write(`got ${l}\nend\nstray after ${l}\n`)));
      const s = await open();
      expect(await s.ask(Buffer.from('one\n'), isEnd)).toEqual({ lines: ['got one', 'end'], ended: false });
      expect(await s.ask(Buffer.from('two\n'), isEnd)).toEqual({ lines: ['got two', 'end'], ended: false });
    });

    it('an unterminated fragment after an answer does not glue onto the next answer', async () => {
      host.script(lineHost((l, ch) => ch.write(`got ${l}\nend\nfragment of ${l}`)));
      const s = await open();
      expect(await s.ask(Buffer.from('one\n'), isEnd)).toEqual({ lines: ['got one', 'end'], ended: false });
      expect(await s.ask(Buffer.from('two\n'), isEnd)).toEqual({ lines: ['got two', 'end'], ended: false });
    });

    it('a line split across packets is one line; several lines in one packet are several', async () => {
      host.script(
        lineHost((l, ch) => {
          ch.write(`got ${l.slice(0, 2)}`);
          ch.write(`${l.slice(2)}\nsecond\nth`);
          ch.write('ird\nend\n');
        }),
      );
      const s = await open();
      expect(await s.ask(Buffer.from('request\n'), isEnd)).toEqual({
        lines: ['got request', 'second', 'third', 'end'],
        ended: false,
      });
    });

    it('close() ends the command standard input (it can exit) and returns at once', async () => {
      let ch: ServerChannel | undefined;
      host.script(
        lineHost(
          (l, c) => c.write(`got ${l}\nend\n`),
          (c) => (ch = c),
        ),
      );
      const s = await open();
      expect(await s.ask(Buffer.from('one\n'), isEnd)).toEqual({ lines: ['got one', 'end'], ended: false });
      const eof = happens(ch as ServerChannel, 'end', 'the command stdin');
      expect(s.close()).toBeUndefined();
      await eof;
    });
  });

  describe('giving up on a request', () => {
    it.each(['timeout', 'abort'] as const)(
      'giving up on a request (%s) rejects naming the command, closes the channel, and later asks end at once',
      async (how) => {
        let ch: ServerChannel | undefined;
        let got: () => void = () => undefined;
        const received = new Promise<void>((r) => (got = r));
        host.script(
          lineHost(
            () => got(),
            (c) => (ch = c),
          ),
        ); // reads requests, never answers
        const s = await open();
        const ac = new AbortController();
        const asking = s.ask(
          Buffer.from('x\n'),
          isEnd,
          how === 'timeout' ? { timeoutMs: 100 } : { signal: ac.signal },
        );
        await received;
        const closed = happens(ch as ServerChannel, 'close', 'the session channel');
        if (how === 'abort') ac.abort();
        const err = await rejection(asking);
        expect([err.code, err.message]).toEqual(
          how === 'timeout'
            ? ['ssh_timeout', 'remote command helper did not finish within 100 ms']
            : ['aborted', 'remote command helper was aborted'],
        );
        // the session is over: answered from its state, without writing or waiting for the channel
        expect(await atOnce(s.ask(Buffer.from('y\n'), isEnd))).toEqual({
          lines: [],
          ended: true,
          exit: { code: 255, stderrTail: '' },
        });
        await closed;
      },
    );
  });

  describe('output bounds', () => {
    // 1 KiB lines: `n` of them, then a last line of `tail` bytes before `end`
    const flood = (ch: ServerChannel, n: number, tail: number, end = true): void => {
      const line = `${'x'.repeat(1023)}\n`;
      const mib = line.repeat(1024);
      for (let i = 0; i < Math.floor(n / 1024); i++) ch.write(mib);
      ch.write(line.repeat(n % 1024));
      ch.write(`${'y'.repeat(tail)}\n${end ? 'end\n' : ''}`);
    };
    const big = { timeoutMs: 60_000 };

    it('an answer of exactly 16 MiB is taken whole', async () => {
      // 16383 lines of 1024 bytes, 'y'*1019 + LF (1020), 'end' + LF (4): 16 MiB
      host.script(lineHost((_l, ch) => flood(ch, 16383, 1019)));
      const s = await open();
      const r = await s.ask(Buffer.from('x\n'), isEnd, big);
      expect(r.ended).toBe(false);
      expect(r.lines).toHaveLength(16385);
      expect(r.lines.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0)).toBe(MAX);
      expect(r.lines.slice(-2)).toEqual(['y'.repeat(1019), 'end']);
    }, 120_000);

    it('one byte more fails the request naming the command, closes the channel, and later asks end at once', async () => {
      let ch: ServerChannel | undefined;
      host.script(
        lineHost(
          (_l, c) => flood(c, 16383, 1020),
          (c) => (ch = c),
        ),
      );
      const s = await open();
      const closed = happens(ch as ServerChannel, 'close', 'the session channel');
      const err = await rejection(s.ask(Buffer.from('x\n'), isEnd, big));
      expect([err.code, err.message]).toEqual([
        'remote_command_failed',
        `helper: output exceeds ${MAX} bytes`,
      ]);
      expect(await atOnce(s.ask(Buffer.from('y\n'), isEnd))).toMatchObject({ lines: [], ended: true });
      await closed;
    }, 120_000);

    it('output over 16 MiB between requests closes the session too', async () => {
      let ch: ServerChannel | undefined;
      host.script(
        lineHost(
          () => undefined,
          (c) => ((ch = c), flood(c, 16384, 0, false)),
        ),
      );
      const s = await open();
      await happens(ch as ServerChannel, 'close', 'the session channel');
      expect(await s.ask(Buffer.from('y\n'), isEnd)).toMatchObject({ lines: [], ended: true });
    }, 120_000);
  });

  describe('the command exiting', () => {
    const exitsWith = (status: number | string, stderr: string[] = []) =>
      lineHost((l, ch) => {
        ch.write(`partial ${l}\n`);
        for (const e of stderr) ch.stderr.write(e);
        if (typeof status === 'number') ch.exit(status);
        else ch.exit(status);
        ch.end();
      });

    it('keeps the last 2000 characters of stderr across packets', async () => {
      host.script(exitsWith(4, ['a'.repeat(1500), 'b'.repeat(1500)]));
      const s = await open();
      expect(await s.ask(Buffer.from('x\n'), isEnd)).toEqual({
        lines: ['partial x'],
        ended: true,
        exit: { code: 4, stderrTail: `${'a'.repeat(500)}${'b'.repeat(1500)}` },
      });
    });

    it.each([
      ['TERM', 128 + 15],
      ['KILL', 128 + 9],
      ['USR1', 255], // not in OpenSSH's list of numbered signals
    ])('killed by SIG%s: exit code %i', async (signal, code) => {
      host.script(exitsWith(signal));
      const s = await open();
      expect(await s.ask(Buffer.from('x\n'), isEnd)).toEqual({
        lines: ['partial x'],
        ended: true,
        exit: { code, stderrTail: '' },
      });
    });

    it('exec (not a line session) reports a command killed by SIGTERM as 143', async () => {
      host.script((accept) => {
        const ch = accept();
        ch.exit('TERM');
        ch.end();
      });
      shell = await connectSsh(target, opts);
      expect(await shell.exec(['helper'])).toMatchObject({ code: 143, signal: 'SIGTERM' });
    });
  });
});
