import { connect, createServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { utils } from 'ssh2';
import { classify, isOrchestratorError } from '../../../orchestrator/errors';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { quoteArgv } from '../../../orchestrator/remote/shell-quote';
import {
  connectSsh,
  run,
  waitUntilReady,
  type RemoteShell,
  type SshTarget,
} from '../../../orchestrator/remote/ssh-shell';
import { Secret } from '../../../orchestrator/secret';
import { rejection } from '../../support/rejection';
import { startTestSshServer, type TestSshServer } from '../../support/ssh-test-server';
import { freePort } from '../../support/free-port';

/**
 * The adapter against an in-process SSH server (test/support/ssh-test-server.ts) that runs each
 * exec request with the local /bin/sh, so its handshake, host-key pinning, authentication, exit
 * codes, stdin, timeouts and aborts are exercised over a real SSH connection without any service.
 */
// ssh2's own ed25519 generator yields a broken key about once in 256; ours does not.
const pair = () => {
  const k = generateHostKeyPair();
  return { private: k.privateKey.reveal(), public: k.publicKey };
};
const hostKey = pair();
const otherHostKey = pair();
const clientKey = pair();
const strangerKey = pair();
const pubLine = (k: { public: string }): string => k.public;

const portOf = (s: { address(): string | AddressInfo | null }): number => (s.address() as AddressInfo).port;
/**
 * A connection to a port nobody listens on. freePort() closes its probe before the port is used,
 * so another process may take it in between: then try another port, a few times.
 */
const refusedConnect = async <T>(attempt: (port: number) => Promise<T>, refused: (r: T) => boolean) => {
  let last: T | undefined;
  for (let i = 0; i < 5; i++) {
    last = await attempt(await freePort());
    if (refused(last)) return last;
  }
  return last;
};

/**
 * A port held for the whole test (no race with other processes): while closed it resets every
 * connection, as a booting host does; once opened it relays to `to`.
 */
const gate = async (to: number) => {
  let open = false;
  let resets = 0;
  const sockets = new Set<Socket>();
  const srv = createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => undefined).on('close', () => sockets.delete(sock));
    if (!open) {
      resets++;
      sock.resetAndDestroy();
      return;
    }
    const up = connect(to, '127.0.0.1');
    sockets.add(up);
    up.on('error', () => sock.destroy()).on('close', () => (sockets.delete(up), sock.destroy()));
    sock.on('close', () => up.destroy());
    sock.pipe(up).pipe(sock);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return {
    port: portOf(srv),
    open: () => void (open = true),
    resets: () => resets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
};

const opts = { privateKey: new Secret(clientKey.private), connectTimeoutMs: 2_000, commandTimeoutMs: 5_000 };

const codeOf = async (p: Promise<unknown>): Promise<string> => (await rejection(p)).code;

describe('ssh2 RemoteShell adapter', () => {
  let ssh: TestSshServer;
  let target: SshTarget;
  let shell: RemoteShell | undefined;
  const commands = (): string[] => ssh.commands;

  beforeAll(async () => {
    ssh = await startTestSshServer({ hostPrivateKey: hostKey.private, clientPublicKey: clientKey.public });
    target = { host: '127.0.0.1', port: ssh.port, hostPublicKey: pubLine(hostKey) };
  });
  afterEach(async () => {
    await shell?.close();
    shell = undefined;
  });
  afterAll(async () => {
    await ssh.close();
  });

  it('logs in against the pinned key and runs argv, returning code, stdout and stderr', async () => {
    shell = await connectSsh(target, opts);
    const r = await shell.exec(['sh', '-c', 'printf out; printf err >&2; exit 3']);
    expect(r.code).toBe(3);
    expect(r.stdout.toString()).toBe('out');
    expect(r.stderr.toString()).toBe('err');
  });

  it('sends exactly the quoted command line', async () => {
    shell = await connectSsh(target, opts);
    const argv = ['printf', '%s|', "it's $(id) `x`", 'a\nb'];
    const r = await shell.exec(argv);
    expect(commands()[commands().length - 1]).toBe(quoteArgv(argv));
    expect(r.stdout.toString()).toBe("it's $(id) `x`|a\nb|");
  });

  it('passes stdin, including a Secret, without putting it on the command line', async () => {
    shell = await connectSsh(target, opts);
    const value = `secret-${Date.now()}`;
    const r = await shell.exec(['cat'], { stdin: new Secret(value) });
    expect(r.stdout.toString()).toBe(value);
    expect(commands().some((c) => c.includes(value))).toBe(false);
  });

  it('refuses a host whose key is not the pinned one, with its own permanent code', async () => {
    const wrong = { ...target, hostPublicKey: pubLine(otherHostKey) };
    const err = await connectSsh(wrong, opts).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('ssh_host_key_mismatch');
    expect(classify(err)).toBe('permanent');
    expect((err as Error).message).toMatch(/SHA256:/);
  });

  it('maps a refused client key to ssh_auth_failed', async () => {
    expect(await codeOf(connectSsh(target, { ...opts, privateKey: new Secret(strangerKey.private) }))).toBe(
      'ssh_auth_failed',
    );
  });

  it('maps a refused TCP connection to ssh_connect_failed, which is retried', async () => {
    const err = await refusedConnect(
      (port) => connectSsh({ ...target, port }, opts).catch((e: unknown) => e),
      (e) => /ECONNREFUSED/.test(String((e as Error | undefined)?.message)),
    );
    expect(isOrchestratorError(err) && err.code).toBe('ssh_connect_failed');
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
    expect(classify(err)).toBe('retry');
  });

  it('times out a server that accepts TCP but never speaks SSH', async () => {
    // The accepted socket is never read, so it would not notice the client going away and would
    // keep the test process alive after the run: destroy it explicitly.
    const accepted = new Set<Socket>();
    const silent: NetServer = createServer((sock) => void accepted.add(sock));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      // Every other deadline is far away, so only the 300 ms connect timeout can end this: without
      // it, ssh2's own 20 s handshake timeout would (and the bound below would fail).
      const t0 = Date.now();
      expect(
        await codeOf(
          connectSsh(
            { ...target, port: portOf(silent) },
            { ...opts, connectTimeoutMs: 300, commandTimeoutMs: 60_000 },
          ),
        ),
      ).toBe('ssh_timeout');
      expect(Date.now() - t0).toBeLessThan(10_000);
    } finally {
      for (const s of accepted) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('times out a command and stops it', async () => {
    shell = await connectSsh(target, opts);
    const t0 = Date.now();
    // A 60 s command against a 300 ms timeout: anything well under a minute proves the timeout.
    expect(await codeOf(shell.exec(['sleep', '60'], { timeoutMs: 300 }))).toBe('ssh_timeout');
    expect(Date.now() - t0).toBeLessThan(10_000);
    // The connection stays usable for the next command.
    expect((await shell.exec(['true'])).code).toBe(0);
  });

  it('aborts a command on signal, and refuses to start one on an aborted signal', async () => {
    shell = await connectSsh(target, opts);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    expect(await codeOf(shell.exec(['sleep', '5'], { signal: ac.signal }))).toBe('aborted');
    expect(await codeOf(shell.exec(['true'], { signal: ac.signal }))).toBe('aborted');
  });

  it('rejects pending commands when the connection drops, instead of hanging', async () => {
    shell = await connectSsh(target, opts);
    const pending = shell.exec(['sleep', '5']);
    setTimeout(() => {
      for (const c of ssh.connections) c.end();
    }, 150);
    expect(await codeOf(pending)).toBe('ssh_connect_failed');
    expect(await codeOf(shell.exec(['true']))).toBe('ssh_connect_failed');
  });

  describe('openLines (a command kept for a conversation in lines)', () => {
    // a line server: answers each request line with two lines, the second the end marker
    const echo = ['sh', '-c', 'while IFS= read -r l; do printf "got %s\\nend\\n" "$l"; done'];
    const isEnd = (l: string) => l === 'end';

    it('answers each request with its lines up to the last one, in order, on one command', async () => {
      shell = await connectSsh(target, opts);
      const before = commands().length;
      const s = await (shell.openLines as NonNullable<RemoteShell['openLines']>)(echo);
      expect(await s.ask(Buffer.from('one\n'), isEnd)).toEqual({ lines: ['got one', 'end'], ended: false });
      expect(await s.ask(Buffer.from('two\n'), isEnd)).toEqual({ lines: ['got two', 'end'], ended: false });
      expect(commands().length - before).toBe(1);
      s.close();
    });

    it('a request is on no command line (a secret rides standard input only)', async () => {
      shell = await connectSsh(target, opts);
      const value = `secret-${Date.now()}`;
      const s = await (shell.openLines as NonNullable<RemoteShell['openLines']>)(echo);
      expect((await s.ask(Buffer.from(`${value}\n`), isEnd)).lines).toEqual([`got ${value}`, 'end']);
      expect(commands().some((c) => c.includes(value))).toBe(false);
      s.close();
    });

    it('a command that exits before its last line gives the lines so far and ended; later asks end at once', async () => {
      shell = await connectSsh(target, opts);
      const s = await (shell.openLines as NonNullable<RemoteShell['openLines']>)([
        'sh',
        '-c',
        'read -r l; printf "partial\\n"; printf "why\\n" >&2; exit 3',
      ]);
      expect(await s.ask(Buffer.from('x\n'), isEnd)).toEqual({
        lines: ['partial'],
        ended: true,
        exit: { code: 3, stderrTail: 'why\n' },
      });
      expect(await s.ask(Buffer.from('y\n'), isEnd)).toMatchObject({ lines: [], ended: true });
    });

    it('times out a request that gets no last line, and closes the session; the connection stays usable', async () => {
      shell = await connectSsh(target, opts);
      const s = await (shell.openLines as NonNullable<RemoteShell['openLines']>)(['sh', '-c', 'sleep 60']);
      const t0 = Date.now();
      expect(await codeOf(s.ask(Buffer.from('x\n'), isEnd, { timeoutMs: 300 }))).toBe('ssh_timeout');
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect((await s.ask(Buffer.from('y\n'), isEnd)).ended).toBe(true);
      expect((await shell.exec(['true'])).code).toBe(0);
    });

    it('rejects a pending request when the connection drops, instead of hanging', async () => {
      shell = await connectSsh(target, opts);
      const s = await (shell.openLines as NonNullable<RemoteShell['openLines']>)(['sh', '-c', 'sleep 60']);
      const pending = s.ask(Buffer.from('x\n'), isEnd);
      setTimeout(() => {
        for (const c of ssh.connections) c.end();
      }, 150);
      const r = await pending.then(
        (v) => v,
        (e: unknown) => (e as { code?: string }).code,
      );
      // either way it settles: refused as a dropped connection, or ended with nothing
      expect(r === 'ssh_connect_failed' || (typeof r === 'object' && r.ended && r.lines.length === 0)).toBe(
        true,
      );
    });
  });

  it('run() turns a non-zero exit into remote_command_failed; the stderr tail stays out of the message and of JSON', async () => {
    shell = await connectSsh(target, opts);
    const err = await run(shell, ['sh', '-c', 'echo nope >&2; exit 4']).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('remote_command_failed');
    expect((err as Error).message).toBe('sh -c echo nope >&2; exit 4 exited 4');
    expect((err as { stderrTail?: string }).stderrTail).toBe('nope');
    expect(JSON.stringify({ ...(err as object) })).not.toContain('nope');
  });

  it('counts a server that offers no ed25519 host key as a mismatch, never retried', async () => {
    const ecdsa = utils.generateKeyPairSync('ecdsa', { bits: 256 });
    const other = await startTestSshServer({
      hostPrivateKey: ecdsa.private,
      clientPublicKey: clientKey.public,
    });
    try {
      const t0 = Date.now();
      const err = await rejection(
        waitUntilReady({ ...target, port: other.port }, { ...opts, timeoutMs: 20_000, intervalMs: 100 }),
      );
      expect([err.code, classify(err)]).toEqual(['ssh_host_key_mismatch', 'permanent']);
      expect(err.message).toContain('(not ssh-ed25519)');
      expect(Date.now() - t0).toBeLessThan(10_000);
    } finally {
      await other.close();
    }
  });

  describe('waitUntilReady', () => {
    it('retries an early ssh_auth_failed (the key not yet installed), then connects', async () => {
      ssh.authorizeClient(false);
      const refusedBefore = ssh.refusals();
      // The positive control: while refused, a single attempt is ssh_auth_failed.
      expect(await codeOf(connectSsh(target, opts))).toBe('ssh_auth_failed');
      setTimeout(() => ssh.authorizeClient(true), 800);
      try {
        shell = await waitUntilReady(target, { ...opts, timeoutMs: 30_000, intervalMs: 100 });
        expect((await shell.exec(['true'])).code).toBe(0);
        expect(ssh.refusals() - refusedBefore).toBeGreaterThanOrEqual(2);
      } finally {
        ssh.authorizeClient(true);
      }
    });

    it('keeps trying while the host boots, then connects', async () => {
      const g = await gate(ssh.port);
      setTimeout(g.open, 700);
      try {
        const t0 = Date.now();
        shell = await waitUntilReady(
          { ...target, port: g.port },
          { ...opts, timeoutMs: 30_000, intervalMs: 100 },
        );
        expect(Date.now() - t0).toBeGreaterThanOrEqual(600);
        expect(g.resets()).toBeGreaterThanOrEqual(2);
        expect((await shell.exec(['true'])).code).toBe(0);
      } finally {
        await shell?.close();
        shell = undefined;
        await g.close();
      }
    });

    it('never retries a host key mismatch', async () => {
      const t0 = Date.now();
      const wrong = { ...target, hostPublicKey: pubLine(otherHostKey) };
      // A retried mismatch would end in `timeout` after 20 s; one attempt takes well under 10.
      expect(await codeOf(waitUntilReady(wrong, { ...opts, timeoutMs: 20_000 }))).toBe(
        'ssh_host_key_mismatch',
      );
      expect(Date.now() - t0).toBeLessThan(10_000);
    });

    it('gives up with timeout (and the last error) when the host never answers', async () => {
      const g = await gate(ssh.port); // never opened: every attempt is reset
      try {
        const err = await waitUntilReady(
          { ...target, port: g.port },
          { ...opts, timeoutMs: 600, intervalMs: 100 },
        ).catch((e: unknown) => e);
        expect(isOrchestratorError(err) && err.code).toBe('timeout');
        expect((err as Error).message).toMatch(/ECONNRESET/);
        expect(g.resets()).toBeGreaterThanOrEqual(2);
      } finally {
        await g.close();
      }
    });
  });
});
