import { Client, type ClientChannel, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import { OrchestratorError, invalidInput, isOrchestratorError } from '../errors';
import type { Logger } from '../log';
import { Secret, isSecret } from '../secret';
import { HOST_KEY_TYPE, fingerprintSha256, parsePublicKey, sameKeyBlob } from './host-keys';
import { type AtomicWriteOptions, writeFileAtomicSftp } from './remote-file';
import { quoteArgv } from './shell-quote';

/** Options of one remote command. */
export interface ExecOptions {
  readonly signal?: AbortSignal;
  /** Default: the shell's command timeout (SSH_COMMAND_TIMEOUT_MS). */
  readonly timeoutMs?: number;
  /** Bytes for the command's standard input; a Secret is revealed only onto the channel. */
  readonly stdin?: Buffer | string | Secret;
}

export interface ExecResult {
  /** Exit status; 128 + n when killed by signal n's name is known to OpenSSH, 255 when unknown. */
  readonly code: number;
  readonly signal?: string;
  readonly stdout: Buffer;
  readonly stderr: Buffer;
}

export interface WriteFileOptions extends AtomicWriteOptions {
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

/**
 * A remote command kept running for a conversation in lines (the swap helper's `session` mode): a
 * request is written to its standard input, its answer is the lines on its standard output up to
 * and including the first that `last` accepts.
 */
export interface LineSession {
  /**
   * Send `request` and collect the answer's lines. Times out, aborts or loses its command like
   * `exec`; the session is then closed. Resolves with the lines read so far and `ended: true` when
   * the command exits before the last line.
   */
  ask(
    request: Buffer,
    last: (line: string) => boolean,
    o?: { readonly timeoutMs?: number; readonly signal?: AbortSignal },
  ): Promise<{
    readonly lines: string[];
    readonly ended: boolean;
    /** Once ended: the command's exit status (255 when unknown) and the tail of its stderr. */
    readonly exit?: { readonly code: number; readonly stderrTail: string };
  }>;
  /** End its standard input and let it exit; does not wait. */
  close(): void;
}

/**
 * The port the provisioning steps use to act on an agent server. Commands are argv arrays (the
 * adapter quotes them); files are replaced atomically and verified root:root with the requested
 * mode (0600 by default) in a root:root directory (0700 by default).
 */
export interface RemoteShell {
  exec(argv: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Start a command for a conversation in lines (optional: callers fall back to `exec`). */
  openLines?(argv: readonly string[], opts?: ExecOptions): Promise<LineSession>;
  writeFileAtomic(path: string, content: Buffer | Secret, opts?: WriteFileOptions): Promise<void>;
  close(): Promise<void>;
}

export interface SshTarget {
  readonly host: string;
  readonly port?: number;
  /** The pinned host key, `ssh-ed25519 AAAA…`; any other key fails the handshake. */
  readonly hostPublicKey: string;
}

export interface SshConnectOptions {
  readonly privateKey: Secret;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly username?: string;
  readonly signal?: AbortSignal;
  readonly log?: Logger;
}

const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
const SIGNALS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ABRT: 6,
  KILL: 9,
  SEGV: 11,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
};

const where = (t: SshTarget): string => `${t.host}:${t.port ?? 22}`;

const abortError = (what: string): OrchestratorError =>
  new OrchestratorError('aborted', `${what} was aborted`);

/** Map an ssh2/socket error to the orchestrator's codes (retry semantics live in the code). */
const toSshError = (err: unknown, target: SshTarget, mismatch: string | undefined): OrchestratorError => {
  if (isOrchestratorError(err)) return err;
  const e = err as { level?: string; code?: string; message?: string };
  const pinned = fingerprintSha256(target.hostPublicKey);
  if (mismatch !== undefined || /no matching host key format/.test(e.message ?? ''))
    return new OrchestratorError(
      'ssh_host_key_mismatch',
      `${where(target)} presented host key ${mismatch ?? '(not ssh-ed25519)'}, but ${pinned} is pinned; refusing to connect`,
      { cause: err },
    );
  if (e.level === 'client-authentication')
    return new OrchestratorError(
      'ssh_auth_failed',
      `${where(target)} refused the orchestrator's key for root`,
      { cause: err },
    );
  if (e.level === 'client-timeout')
    return new OrchestratorError('ssh_timeout', `${where(target)}: SSH handshake timed out`, { cause: err });
  return new OrchestratorError(
    'ssh_connect_failed',
    `${where(target)}: ${e.code ?? e.message ?? 'connection failed'}`,
    {
      cause: err,
    },
  );
};

/**
 * Run `fn` against a deadline and a signal; `onCancel` tears the operation down (closes a channel)
 * so nothing keeps running after we gave up on it.
 */
const bounded = <T>(
  what: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  onCancel: () => void,
  fn: () => Promise<T>,
): Promise<T> => {
  if (signal?.aborted) return Promise.reject(abortError(what));
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const finish = (f: () => void): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      f();
    };
    const onAbort = (): void => finish(() => (onCancel(), reject(abortError(what))));
    const timer = setTimeout(
      () =>
        finish(
          () => (
            onCancel(),
            reject(new OrchestratorError('ssh_timeout', `${what} did not finish within ${timeoutMs} ms`))
          ),
        ),
      timeoutMs,
    );
    signal?.addEventListener('abort', onAbort, { once: true });
    fn().then(
      (v) => finish(() => resolve(v)),
      (err: unknown) => finish(() => reject(err)),
    );
  });
};

/** Connect as root with the orchestrator key, verifying the host key against the pinned one. */
export const connectSsh = (target: SshTarget, opts: SshConnectOptions): Promise<RemoteShell> => {
  const pinned = parsePublicKey(target.hostPublicKey);
  const client = new Client();
  let mismatch: string | undefined;
  let closed = false;
  const pending = new Set<(err: Error) => void>();

  client.on('close', () => {
    closed = true;
    const err = new OrchestratorError('ssh_connect_failed', `${where(target)}: connection closed`);
    for (const reject of pending) reject(err);
    pending.clear();
  });
  // After the handshake, errors surface through 'close' on the pending operations.
  client.on('error', () => undefined);

  const config: ConnectConfig = {
    host: target.host,
    port: target.port ?? 22,
    username: opts.username ?? 'root',
    privateKey: opts.privateKey.reveal(),
    readyTimeout: opts.connectTimeoutMs,
    keepaliveInterval: 15_000,
    keepaliveCountMax: 3,
    algorithms: { serverHostKey: [HOST_KEY_TYPE] },
    // Raw key blob (no hostHash): compare the whole key, not a fingerprint of it.
    hostVerifier: (key: Buffer): boolean => {
      if (sameKeyBlob(key, pinned.blob)) return true;
      mismatch = fingerprintSha256(key);
      return false;
    },
  };

  const connected = bounded(
    `SSH connect to ${where(target)}`,
    opts.connectTimeoutMs + 1_000,
    opts.signal,
    () => client.destroy(),
    () =>
      new Promise<void>((resolve, reject) => {
        client.once('ready', () => resolve());
        client.once('error', (err) => reject(toSshError(err, target, mismatch)));
        client.once('close', () =>
          reject(toSshError(new Error('connection closed during handshake'), target, mismatch)),
        );
        client.connect(config);
      }),
  );

  /** Track an operation so a dropped connection rejects it instead of leaving it hanging. */
  const tracked = <T>(fn: (reject: (err: Error) => void) => Promise<T>): Promise<T> => {
    if (closed)
      return Promise.reject(
        new OrchestratorError('ssh_connect_failed', `${where(target)}: connection closed`),
      );
    let rej: (err: Error) => void = () => undefined;
    const dropped = new Promise<never>((_, reject) => {
      rej = reject;
      pending.add(reject);
    });
    return Promise.race([fn(rej), dropped]).finally(() => pending.delete(rej));
  };

  const exec = (argv: readonly string[], eo: ExecOptions = {}): Promise<ExecResult> => {
    const command = quoteArgv(argv);
    let channel: ClientChannel | undefined;
    return bounded(
      `remote command ${argv[0] ?? ''}`,
      eo.timeoutMs ?? opts.commandTimeoutMs,
      eo.signal,
      () => channel?.close(),
      () =>
        tracked(
          () =>
            new Promise<ExecResult>((resolve, reject) => {
              client.exec(command, (err, stream) => {
                if (err)
                  return reject(
                    new OrchestratorError('ssh_connect_failed', `${where(target)}: ${err.message}`, {
                      cause: err,
                    }),
                  );
                channel = stream;
                const out: Buffer[] = [];
                const errOut: Buffer[] = [];
                let size = 0;
                let code = 255;
                let sig: string | undefined;
                const collect = (into: Buffer[]) => (d: Buffer) => {
                  size += d.length;
                  if (size > MAX_OUTPUT_BYTES) {
                    stream.close();
                    reject(
                      new OrchestratorError(
                        'remote_command_failed',
                        `${argv[0] ?? ''}: output exceeds ${MAX_OUTPUT_BYTES} bytes`,
                      ),
                    );
                  } else into.push(d);
                };
                stream.on('data', collect(out));
                stream.stderr.on('data', collect(errOut));
                stream.on('exit', (c: number | null, signalName?: string) => {
                  if (typeof c === 'number') code = c;
                  else if (signalName) {
                    sig = signalName;
                    // ssh2 names it SIGTERM; OpenSSH's list (SIGNALS) has TERM
                    code = 128 + (SIGNALS[signalName.replace(/^SIG/, '')] ?? 127);
                  }
                });
                stream.on('close', () =>
                  resolve({
                    code,
                    stdout: Buffer.concat(out),
                    stderr: Buffer.concat(errOut),
                    ...(sig ? { signal: sig } : {}),
                  }),
                );
                if (eo.stdin === undefined) stream.end();
                else {
                  const buf = isSecret(eo.stdin)
                    ? Buffer.from(eo.stdin.reveal(), 'utf8')
                    : Buffer.from(eo.stdin);
                  stream.end(buf);
                }
              });
            }),
        ),
    );
  };

  const openLines = (argv: readonly string[], eo: ExecOptions = {}): Promise<LineSession> => {
    // Input goes with each request (ask); one for the whole session would be silently dropped.
    if (eo.stdin !== undefined)
      return Promise.reject(invalidInput('stdin', 'a line session takes its input with each request'));
    const name = argv[0] ?? '';
    let opened: ClientChannel | undefined;
    let gaveUp = false;
    return bounded(
      `remote command ${name}`,
      eo.timeoutMs ?? opts.commandTimeoutMs,
      eo.signal,
      () => {
        gaveUp = true;
        opened?.close();
      },
      () =>
        tracked(
          () =>
            new Promise<ClientChannel>((resolve, reject) =>
              client.exec(quoteArgv(argv), (err, stream) => {
                if (err)
                  return reject(
                    new OrchestratorError('ssh_connect_failed', `${where(target)}: ${err.message}`, {
                      cause: err,
                    }),
                  );
                opened = stream;
                // opened after the caller gave up (timeout, abort): nobody will use or end it
                if (gaveUp) stream.close();
                resolve(stream);
              }),
            ),
        ),
    ).then((stream) => lineSession(stream, name));
  };

  /** One request at a time; stdout is split into lines; stderr is kept as a tail for the exit. */
  const lineSession = (stream: ClientChannel, name: string): LineSession => {
    let partial = '';
    let ended = false;
    let size = 0;
    let waiting:
      | {
          lines: string[];
          last: (l: string) => boolean;
          done: (ended: boolean) => void;
          fail: (e: Error) => void;
        }
      | undefined;
    const queued: string[] = [];
    const take = (line: string): void => {
      if (!waiting) return void queued.push(line);
      waiting.lines.push(line);
      if (waiting.last(line)) {
        const w = waiting;
        waiting = undefined;
        w.done(false);
      }
    };
    stream.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_OUTPUT_BYTES) {
        waiting?.fail(
          new OrchestratorError('remote_command_failed', `${name}: output exceeds ${MAX_OUTPUT_BYTES} bytes`),
        );
        waiting = undefined;
        ended = true;
        stream.close();
        return;
      }
      const parts = (partial + d.toString('utf8')).split('\n');
      partial = parts.pop() ?? '';
      for (const l of parts) take(l);
    });
    let stderrTail = '';
    let exitCode = 255;
    stream.stderr.on('data', (d: Buffer) => {
      stderrTail = (stderrTail + d.toString('utf8')).slice(-2_000);
    });
    stream.on('exit', (c: number | null, signalName?: string) => {
      if (typeof c === 'number') exitCode = c;
      // ssh2 names it SIGTERM; OpenSSH's list (SIGNALS) has TERM
      else if (signalName) exitCode = 128 + (SIGNALS[signalName.replace(/^SIG/, '')] ?? 127);
    });
    const exit = () => ({ code: exitCode, stderrTail });
    stream.on('close', () => {
      ended = true;
      const w = waiting;
      waiting = undefined;
      w?.done(true);
    });
    const ask: LineSession['ask'] = (request, last, ao = {}) =>
      bounded(
        `remote command ${name}`,
        ao.timeoutMs ?? opts.commandTimeoutMs,
        ao.signal,
        () => {
          // timed out or aborted: the session is over for every later request too
          ended = true;
          waiting = undefined;
          stream.close();
        },
        () =>
          tracked(
            () =>
              new Promise<Awaited<ReturnType<LineSession['ask']>>>((resolve, reject) => {
                if (waiting)
                  return reject(new OrchestratorError('internal', `${name}: one request at a time`));
                const lines: string[] = [];
                if (ended) return resolve({ lines, ended: true, exit: exit() });
                size = 0;
                waiting = {
                  lines,
                  last,
                  done: (e) => resolve(e ? { lines, ended: true, exit: exit() } : { lines, ended: false }),
                  fail: reject,
                };
                queued.length = 0; // output nobody asked for answers no request
                partial = ''; // nor does an unterminated line left after the last answer
                stream.write(request);
              }),
          ),
      );
    return { ask, close: () => void stream.end() };
  };

  const writeFileAtomic = (
    path: string,
    content: Buffer | Secret,
    wo: WriteFileOptions = {},
  ): Promise<void> => {
    let sftp: SFTPWrapper | undefined;
    return bounded(
      `atomic write of ${path}`,
      wo.timeoutMs ?? opts.commandTimeoutMs,
      wo.signal,
      () => sftp?.end(),
      () =>
        tracked(async () => {
          sftp = await new Promise<SFTPWrapper>((resolve, reject) =>
            client.sftp((err, s) =>
              err
                ? reject(new OrchestratorError('ssh_connect_failed', err.message, { cause: err }))
                : resolve(s),
            ),
          );
          const buf = isSecret(content) ? Buffer.from(content.reveal(), 'utf8') : content;
          try {
            const { removedTemps } = await writeFileAtomicSftp(sftp, path, buf, wo);
            if (removedTemps.length > 0)
              opts.log?.warn({ path, removedTemps }, 'removed temp files of an interrupted write');
          } catch (err) {
            // An SFTP status (a numeric code: no such file, permission denied, …) is the server's
            // refusal, not a network blink: an OrchestratorError that classify() understands. Its
            // text is the server's status message, which never holds the content.
            const code = (err as { code?: unknown }).code;
            if (!isOrchestratorError(err) && typeof code === 'number')
              throw new OrchestratorError(
                'remote_command_failed',
                `atomic write of ${path}: ${(err as Error).message} (SFTP status ${code})`,
              );
            throw err;
          } finally {
            if (isSecret(content)) buf.fill(0);
            sftp.end();
          }
        }),
    );
  };

  const close = (): Promise<void> =>
    new Promise<void>((resolve) => {
      if (closed) return resolve();
      client.once('close', () => resolve());
      client.end();
    });

  return connected.then(
    () => ({ exec, openLines, writeFileAtomic, close }) satisfies RemoteShell,
    (err: unknown) => {
      client.destroy();
      throw err;
    },
  );
};

export interface WaitUntilReadyOptions extends SshConnectOptions {
  /** Overall budget for the host to boot and accept the pinned key. */
  readonly timeoutMs: number;
  readonly intervalMs?: number;
}

/**
 * Connect to a booting host: retries refused/reset connections, handshake timeouts and early
 * authentication failures (sshd can answer a moment before cloud-init has installed the
 * authorized key) until `timeoutMs`; never retries a host key mismatch or an abort.
 */
export const waitUntilReady = async (
  target: SshTarget,
  opts: WaitUntilReadyOptions,
): Promise<RemoteShell> => {
  const deadline = Date.now() + opts.timeoutMs;
  let last: unknown;
  for (let attempt = 1; ; attempt++) {
    if (opts.signal?.aborted) throw abortError(`waiting for SSH on ${where(target)}`);
    const left = deadline - Date.now();
    if (left <= 0) break;
    try {
      return await connectSsh(target, {
        ...opts,
        connectTimeoutMs: Math.max(100, Math.min(opts.connectTimeoutMs, left)),
      });
    } catch (err) {
      if (isOrchestratorError(err) && (err.code === 'ssh_host_key_mismatch' || err.code === 'aborted'))
        throw err;
      last = err;
      opts.log?.debug(
        { attempt, code: isOrchestratorError(err) ? err.code : undefined },
        'SSH not ready yet',
      );
    }
    const wait = Math.min(opts.intervalMs ?? 250, deadline - Date.now());
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  const lastMsg = last instanceof Error ? last.message : 'no attempt finished';
  throw new OrchestratorError(
    'timeout',
    `${where(target)} was not SSH-ready within ${opts.timeoutMs} ms (last: ${lastMsg})`,
    {
      cause: last,
    },
  );
};

/**
 * Run a command and fail with `remote_command_failed` on a non-zero exit. The message names the
 * command and its exit code only: what the host printed is the host's to choose (a compromised one
 * could print the env file), and a message travels into step records, job failures and logs. The
 * stderr tail stays on the error as a non-enumerable `stderrTail`, for a caller that inspects it in
 * memory; no serializer sees it.
 */
export const run = async (
  shell: RemoteShell,
  argv: readonly string[],
  opts?: ExecOptions,
): Promise<ExecResult> => {
  const r = await shell.exec(argv, opts);
  if (r.code !== 0) {
    const err = new OrchestratorError('remote_command_failed', `${argv.join(' ')} exited ${r.code}`);
    Object.defineProperty(err, 'stderrTail', {
      value: r.stderr.toString('utf8').trim().slice(-500),
      enumerable: false,
    });
    throw err;
  }
  return r;
};
