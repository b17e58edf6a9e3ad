import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Stats } from 'ssh2';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { type SftpOps, isTempNameFor, writeFileAtomicSftp } from '../../../orchestrator/remote/remote-file';

/**
 * This fake is sftp-server running AS ROOT on this machine: it must never touch a path outside the
 * test's own temporary directory. A mutant (Stryker) or a bug that lets a bad path through
 * otherwise writes `/top` or `/etc/x` and takes over `/` or `/etc` with mode 0700 — which happened
 * once and locked Postgres out of its shared memory. Such a call fails here instead (with a message
 * that does not mention "path", so it cannot pass for the product's own refusal).
 */
const SANDBOX = join(tmpdir(), 'rf-');
const confined = (p: unknown): string => {
  if (typeof p !== 'string' || !resolve(p).startsWith(SANDBOX) || resolve(p) !== p)
    throw Object.assign(new Error(`test fake: ${JSON.stringify(p)} is outside the sandbox`), {
      code: 'EFAKE',
    });
  return p;
};

/**
 * SFTP over the local file system, as OpenSSH's sftp-server does it (open with O_EXCL and the
 * requested mode under the process umask, POSIX rename, fsync), recording each call so the
 * order of the atomic write can be asserted, and able to fail any step.
 */
const localSftp = (failAt?: string) => {
  const log: string[] = [];
  const handles = new Map<string, number>();
  let next = 0;
  const cbify =
    <A extends unknown[]>(name: string, f: (...a: A) => unknown) =>
    (...args: [...A, (err: Error | undefined, v?: unknown) => void]) => {
      const cb = args.pop() as (err: Error | undefined, v?: unknown) => void;
      log.push(name);
      if (name === failAt) return cb(new Error(`injected failure at ${name}`));
      try {
        cb(undefined, f(...(args as unknown as A)));
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        cb(Object.assign(new Error(e.message), { code: e.code === 'ENOENT' ? 2 : 4 }));
      }
    };
  const fd = (h: Buffer): number => handles.get(h.toString()) as number;
  const toStats = (s: fs.Stats): Stats =>
    ({ mode: s.mode, uid: s.uid, gid: s.gid, size: s.size }) as unknown as Stats;
  const sftp = {
    open: cbify('open', (p: string, flags: string, attrs: { mode: number }) => {
      if (flags !== 'wx') throw new Error('unexpected flags');
      const h = Buffer.from(String(next++));
      handles.set(
        h.toString(),
        fs.openSync(
          confined(p),
          fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
          attrs.mode,
        ),
      );
      return h;
    }),
    write: cbify('write', (h: Buffer, b: Buffer, off: number, len: number, pos: number) =>
      fs.writeSync(fd(h), b, off, len, pos),
    ),
    ext_openssh_fsync: cbify('fsync', (h: Buffer) => fs.fsyncSync(fd(h))),
    fchown: cbify('fchown', (h: Buffer, u: number, g: number) => fs.fchownSync(fd(h), u, g)),
    fchmod: cbify('fchmod', (h: Buffer, m: number) => fs.fchmodSync(fd(h), m)),
    close: cbify('close', (h: Buffer) => fs.closeSync(fd(h))),
    ext_openssh_rename: cbify('rename', (a: string, b: string) => fs.renameSync(confined(a), confined(b))),
    lstat: cbify('lstat', (p: string) => toStats(fs.lstatSync(confined(p)))),
    mkdir: cbify('mkdir', (p: string, a: { mode: number }) => fs.mkdirSync(confined(p), { mode: a.mode })),
    setstat: cbify('setstat', (p: string, a: { uid: number; gid: number; mode: number }) => {
      fs.chownSync(confined(p), a.uid, a.gid);
      fs.chmodSync(p, a.mode);
    }),
    readdir: cbify('readdir', (p: string) => fs.readdirSync(confined(p)).map((filename) => ({ filename }))),
    unlink: cbify('unlink', (p: string) => fs.unlinkSync(confined(p))),
  } as unknown as SftpOps;
  return { sftp, log };
};

describe('atomic remote write (SFTP sequence)', () => {
  let root: string;
  let dir: string;
  let target: string;
  beforeEach(() => {
    root = fs.mkdtempSync(join(tmpdir(), 'rf-'));
    dir = join(root, 'cortex');
    target = join(dir, 'agent.env');
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const isRoot = process.geteuid?.() === 0;
  const itRoot = isRoot ? it : it.skip;

  itRoot('creates the 0700 directory and a root:root 0600 file, in the documented order', async () => {
    const { sftp, log } = localSftp();
    await writeFileAtomicSftp(sftp, target, Buffer.from('A="1"\n'));
    expect(fs.readFileSync(target, 'utf8')).toBe('A="1"\n');
    const st = fs.statSync(target);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o600]);
    expect(fs.statSync(dir).mode & 0o7777).toBe(0o700);
    const order = log.filter((c) => ['open', 'write', 'fsync', 'fchown', 'close', 'rename'].includes(c));
    expect(order).toEqual(['open', 'write', 'fsync', 'fchown', 'close', 'rename']);
    expect(log[log.length - 1]).toBe('lstat');
    expect(fs.readdirSync(dir)).toEqual(['agent.env']);
  });

  itRoot('writes large content in chunks and replaces an existing file', async () => {
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.writeFileSync(target, 'old', { mode: 0o600 });
    const big = Buffer.alloc(200_000, 7);
    await writeFileAtomicSftp(localSftp().sftp, target, big);
    expect(fs.readFileSync(target).equals(big)).toBe(true);
  });

  itRoot('tightens a directory that exists with a wider mode', async () => {
    fs.mkdirSync(dir, { mode: 0o755 });
    fs.chmodSync(dir, 0o755);
    await writeFileAtomicSftp(localSftp().sftp, target, Buffer.from('x'));
    expect(fs.statSync(dir).mode & 0o7777).toBe(0o700);
  });

  itRoot('gives 0644 files and 0755 directories when asked (Caddyfile, unit files)', async () => {
    const { sftp, log } = localSftp();
    await writeFileAtomicSftp(sftp, target, Buffer.from('x'), { mode: 0o644, dirMode: 0o755 });
    expect(fs.statSync(target).mode & 0o7777).toBe(0o644);
    expect(fs.statSync(dir).mode & 0o7777).toBe(0o755);
    expect(log.indexOf('fchmod')).toBeGreaterThan(log.indexOf('fchown'));
    expect(log.indexOf('fchmod')).toBeLessThan(log.indexOf('rename'));
  });

  it.each(['write', 'fsync', 'fchown', 'close', 'rename'])(
    'a failure at %s leaves the old file intact and no temp file',
    async (step) => {
      fs.mkdirSync(dir, { mode: 0o700 });
      fs.writeFileSync(target, 'old', { mode: 0o600 });
      // fchown needs root; emulate as the current user by making it a no-op success where not root.
      const { sftp } = localSftp(step);
      if (!isRoot)
        (sftp as unknown as Record<string, unknown>).fchown = (
          _h: Buffer,
          _u: number,
          _g: number,
          cb: () => void,
        ) => cb();
      await expect(writeFileAtomicSftp(sftp, target, Buffer.from('new content'))).rejects.toThrow(/injected/);
      expect(fs.readFileSync(target, 'utf8')).toBe('old');
      expect(fs.readdirSync(dir)).toEqual(['agent.env']);
    },
  );

  itRoot('removes temp files an interrupted earlier write left behind, and only those', async () => {
    fs.mkdirSync(dir, { mode: 0o700 });
    const stale = '.agent.env.tmp-0123456789abcdef';
    fs.writeFileSync(join(dir, stale), 'partial', { mode: 0o600 });
    fs.writeFileSync(join(dir, '.other.tmp-0123456789abcdef'), 'x', { mode: 0o600 });
    const r = await writeFileAtomicSftp(localSftp().sftp, target, Buffer.from('x'));
    expect(r.removedTemps).toEqual([stale]);
    expect(fs.readdirSync(dir).sort()).toEqual(['.other.tmp-0123456789abcdef', 'agent.env']);
  });

  itRoot('reports remote_file_unsafe when the result is not what was asked', async () => {
    const { sftp } = localSftp();
    // A server that ignores chown (e.g. a non-root login) leaves the file owned by someone else.
    (sftp as unknown as Record<string, unknown>).fchown = (
      _h: Buffer,
      _u: number,
      _g: number,
      cb: () => void,
    ) => cb();
    const lstat = sftp.lstat.bind(sftp);
    (sftp as unknown as Record<string, unknown>).lstat = (
      p: string,
      cb: (e: Error | undefined, s: Stats) => void,
    ) => lstat(p, (e, s) => cb(e, p === target ? ({ ...s, uid: 1000 } as Stats) : s));
    try {
      await writeFileAtomicSftp(sftp, target, Buffer.from('x'));
      throw new Error('expected remote_file_unsafe');
    } catch (err) {
      expect(isOrchestratorError(err) && err.code).toBe('remote_file_unsafe');
    }
  });

  itRoot('refuses a parent that is not a directory', async () => {
    fs.writeFileSync(dir, 'file in the way');
    await expect(writeFileAtomicSftp(localSftp().sftp, target, Buffer.from('x'))).rejects.toThrow(
      /not a directory/,
    );
  });

  it.each(['relative/path', '/etc/../etc/x', '/', '/top', '/etc/cortex/', '/etc/a\0b'])(
    'rejects the path %j',
    async (p) => {
      await expect(writeFileAtomicSftp(localSftp().sftp, p, Buffer.from('x'))).rejects.toThrow(/path/);
    },
  );

  it('recognises only its own temp names', () => {
    expect(isTempNameFor('agent.env', '.agent.env.tmp-0123456789abcdef')).toBe(true);
    expect(isTempNameFor('agent.env', '.agent.env.tmp-')).toBe(false);
    expect(isTempNameFor('agent.env', 'agent.env')).toBe(false);
    expect(isTempNameFor('agent.env', '.agent.env.tmp-0123456789abcdeg')).toBe(false);
  });
});
