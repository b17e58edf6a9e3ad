import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Stats } from 'ssh2';
import type { OrchestratorError } from '../../../orchestrator/errors';
import {
  type SftpOps,
  checkRemotePath,
  isTempNameFor,
  tempNameFor,
  writeFileAtomicSftp,
} from '../../../orchestrator/remote/remote-file';

/**
 * The atomic remote write at its exact boundaries, with its exact messages (mutation testing:
 * each test fails on a mutant the sequence tests in remote-file.test.ts let survive). SFTP is
 * served from the local file system as OpenSSH's sftp-server does it; every call is logged with its
 * arguments, and any call can be failed or its result altered.
 */
type Call = { name: string; args: unknown[] };
type Hooks = {
  failAt?: string;
  failCode?: number;
  /** Change what lstat reports for a path (the n-th lstat of that path, from 1). */
  lstat?: (path: string, st: Stats, n: number) => Stats;
  setstat?: 'ignore';
};
const S_IFLNK = 0o120000;

/**
 * This fake is sftp-server running AS ROOT on this machine: it must never touch a path outside the
 * test's own temporary directory. A mutant (Stryker) or a bug that lets a bad path through
 * otherwise writes `/top` or `/etc/x` and takes over `/` or `/etc` with mode 0700 — which happened
 * once and locked Postgres out of its shared memory. Such a call fails here instead (with a message
 * that does not mention "path", so it cannot pass for the product's own refusal).
 */
const SANDBOX = join(tmpdir(), 'rfb-');
const confined = (p: unknown): string => {
  if (typeof p !== 'string' || !resolve(p).startsWith(SANDBOX) || resolve(p) !== p)
    throw Object.assign(new Error(`test fake: ${JSON.stringify(p)} is outside the sandbox`), {
      code: 'EFAKE',
    });
  return p;
};

const localSftp = (hooks: Hooks = {}) => {
  const log: Call[] = [];
  const handles = new Map<string, number>();
  const lstats = new Map<string, number>();
  let next = 0;
  const cbify =
    <A extends unknown[]>(name: string, f: (...a: A) => unknown) =>
    (...args: [...A, (err: Error | undefined, v?: unknown) => void]) => {
      const cb = args.pop() as (err: Error | undefined, v?: unknown) => void;
      log.push({ name, args: args.map((a) => (Buffer.isBuffer(a) && a.length > 8 ? a.length : a)) });
      if (name === hooks.failAt)
        return cb(Object.assign(new Error(`injected failure at ${name}`), { code: hooks.failCode ?? 4 }));
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
    write: cbify('write', (h: Buffer, b: Buffer, off: number, len: number, pos: number) => {
      if (!Number.isInteger(len) || len <= 0 || off + len > b.length) throw new Error('bad write');
      return fs.writeSync(fd(h), b, off, len, pos);
    }),
    ext_openssh_fsync: cbify('fsync', (h: Buffer) => fs.fsyncSync(fd(h))),
    fchown: cbify('fchown', (h: Buffer, u: number, g: number) => fs.fchownSync(fd(h), u, g)),
    fchmod: cbify('fchmod', (h: Buffer, m: number) => fs.fchmodSync(fd(h), m)),
    close: cbify('close', (h: Buffer) => fs.closeSync(fd(h))),
    ext_openssh_rename: cbify('rename', (a: string, b: string) => fs.renameSync(confined(a), confined(b))),
    lstat: cbify('lstat', (p: string) => {
      const n = (lstats.get(p) ?? 0) + 1;
      lstats.set(p, n);
      const st = toStats(fs.lstatSync(confined(p)));
      return hooks.lstat ? hooks.lstat(p, st, n) : st;
    }),
    mkdir: cbify('mkdir', (p: string, a: { mode: number }) => fs.mkdirSync(confined(p), { mode: a.mode })),
    setstat: cbify('setstat', (p: string, a: { uid: number; gid: number; mode: number }) => {
      if (hooks.setstat === 'ignore') return;
      fs.chownSync(confined(p), a.uid, a.gid);
      fs.chmodSync(p, a.mode);
    }),
    readdir: cbify('readdir', (p: string) => fs.readdirSync(confined(p)).map((filename) => ({ filename }))),
    unlink: cbify('unlink', (p: string) => fs.unlinkSync(confined(p))),
  } as unknown as SftpOps;
  return { sftp, log, names: () => log.map((c) => c.name) };
};

const refusal = async (p: Promise<unknown>): Promise<Pick<OrchestratorError, 'code' | 'message'>> => {
  try {
    await p;
  } catch (err) {
    const e = err as OrchestratorError;
    return { code: e.code, message: e.message };
  }
  throw new Error('expected a refusal');
};

describe('remote paths and temp names, exactly', () => {
  it('refuses each bad path with its message, and takes a plain one', () => {
    const message = (p: unknown): [string, string] => {
      try {
        checkRemotePath(p as string);
      } catch (err) {
        const e = err as OrchestratorError;
        return [e.code, e.message];
      }
      return ['taken', ''];
    };
    for (const p of [
      42,
      undefined,
      'relative/path',
      '/etc/../etc/x',
      '/etc//x',
      '/etc/./x',
      '/etc/cortex/',
      '/etc/a\0b',
      '/',
    ])
      expect(message(p)).toEqual(['invalid_input', 'path: must be an absolute, normalised file path']);
    expect(message('/top')).toEqual(['invalid_input', 'path: must be inside a directory other than /']);
    expect(checkRemotePath('/etc/cortex/agent.env')).toEqual({ dir: '/etc/cortex', base: 'agent.env' });
    expect(checkRemotePath('/a/b')).toEqual({ dir: '/a', base: 'b' });
  });

  it('a temp name is .<base>.tmp- and exactly 16 lower-case hex digits, and only that is its own', () => {
    const t = tempNameFor('agent.env');
    expect(t).toMatch(/^\.agent\.env\.tmp-[0-9a-f]{16}$/);
    expect(isTempNameFor('agent.env', t)).toBe(true);
    expect(tempNameFor('agent.env')).not.toBe(t);
    const hex = '0123456789abcdef';
    for (const other of [
      `.agent.env.tmp-${hex}0`,
      `.agent.env.tmp-g${hex.slice(1)}`,
      `.agent.env.tmp-${hex.slice(1)}`,
      `.agent.env.tmp-${hex.toUpperCase()}`,
      `.agent.env.tmp-x${hex}`,
      `x.agent.env.tmp-${hex}`,
      `.agent.envxtmp-${hex}`,
      `.Caddyfile.tmp-${hex}`,
    ])
      expect([other, isTempNameFor('agent.env', other)]).toEqual([other, false]);
  });
});

describe('atomic remote write, exactly', () => {
  let root: string;
  let dir: string;
  let target: string;
  beforeEach(() => {
    root = fs.mkdtempSync(join(tmpdir(), 'rfb-'));
    dir = join(root, 'cortex');
    target = join(dir, 'agent.env');
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const itRoot = process.geteuid?.() === 0 ? it : it.skip;
  const ownerMode = (p: string): number[] => {
    const st = fs.statSync(p);
    return [st.uid, st.gid, st.mode & 0o7777];
  };

  itRoot(
    'writes in 32 KiB chunks at their own offsets, nothing for empty content, and no fchmod for 0600',
    async () => {
      const big = Buffer.alloc(3 * 32 * 1024 + 5, 7);
      const a = localSftp();
      await writeFileAtomicSftp(a.sftp, target, big);
      expect(a.log.filter((c) => c.name === 'write').map((c) => c.args.slice(2, 5))).toEqual([
        [0, 32768, 0],
        [32768, 32768, 32768],
        [65536, 32768, 65536],
        [98304, 5, 98304],
      ]);
      expect(a.names()).not.toContain('fchmod');
      expect(fs.readFileSync(target).equals(big)).toBe(true);
      const exact = Buffer.alloc(32 * 1024, 1);
      const b = localSftp();
      await writeFileAtomicSftp(b.sftp, target, exact);
      expect(b.log.filter((c) => c.name === 'write').map((c) => c.args.slice(2, 5))).toEqual([[0, 32768, 0]]);
      const c = localSftp();
      await writeFileAtomicSftp(c.sftp, target, Buffer.alloc(0));
      expect(c.names()).not.toContain('write');
      expect(fs.readFileSync(target)).toHaveLength(0);
      // the temp file is opened 'wx' (O_EXCL) with mode 0600 and chowned to root:root
      expect(c.log.find((x) => x.name === 'open')?.args.slice(1)).toEqual(['wx', { mode: 0o600 }]);
      expect(c.log.find((x) => x.name === 'fchown')?.args.slice(1)).toEqual([0, 0]);
      expect(c.log.find((x) => x.name === 'mkdir')).toBeUndefined();
    },
  );

  itRoot(
    'creates a missing directory with the asked mode; an lstat error other than no-such-file is passed on',
    async () => {
      const a = localSftp();
      await writeFileAtomicSftp(a.sftp, target, Buffer.from('x'), { dirMode: 0o755, mode: 0o644 });
      expect(a.log.find((c) => c.name === 'mkdir')?.args).toEqual([dir, { mode: 0o755 }]);
      expect(a.log.find((c) => c.name === 'fchmod')?.args.slice(1)).toEqual([0o644]);
      expect(ownerMode(dir)).toEqual([0, 0, 0o755]);
      expect(ownerMode(target)).toEqual([0, 0, 0o644]);
      fs.rmSync(dir, { recursive: true });
      const b = localSftp({ failAt: 'lstat', failCode: 3 });
      await expect(writeFileAtomicSftp(b.sftp, target, Buffer.from('x'))).rejects.toThrow(
        'injected failure at lstat',
      );
      expect(b.names()).toEqual(['lstat']);
    },
  );

  itRoot(
    'takes over a directory whose owner, group or mode alone is wrong, and leaves a right one as it is',
    async () => {
      for (const [uid, gid, mode] of [
        [65534, 0, 0o700],
        [0, 65534, 0o700],
        [0, 0, 0o750],
      ] as const) {
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir);
        fs.chownSync(dir, uid, gid);
        fs.chmodSync(dir, mode);
        const a = localSftp();
        await writeFileAtomicSftp(a.sftp, target, Buffer.from('x'));
        expect(a.log.find((c) => c.name === 'setstat')?.args).toEqual([dir, { uid: 0, gid: 0, mode: 0o700 }]);
        expect(ownerMode(dir)).toEqual([0, 0, 0o700]);
      }
      const b = localSftp();
      await writeFileAtomicSftp(b.sftp, target, Buffer.from('y'));
      expect(b.names()).not.toContain('setstat');
    },
  );

  itRoot('refuses a directory it could not make its own: owner, group, mode or type, exactly', async () => {
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    const cases: [string, (st: Stats) => Stats][] = [
      ['uid', (st) => ({ ...st, uid: 1000 }) as Stats],
      ['gid', (st) => ({ ...st, gid: 1000 }) as Stats],
      ['mode', (st) => ({ ...st, mode: (st.mode & ~0o7777) | 0o755 }) as Stats],
      ['type', (st) => ({ ...st, mode: S_IFLNK | 0o700 }) as Stats],
    ];
    for (const [what, change] of cases) {
      // the first lstat reports the wrong attribute (or for the type, a wrong mode); the check after
      // setstat reports `change` applied to the real directory
      const a = localSftp({
        lstat: (p, st, n) =>
          p !== dir ? st : n === 1 ? ({ ...st, mode: (st.mode & ~0o7777) | 0o755 } as Stats) : change(st),
        setstat: 'ignore',
      });
      expect([what, await refusal(writeFileAtomicSftp(a.sftp, target, Buffer.from('x')))]).toEqual([
        what,
        { code: 'remote_file_unsafe', message: `${dir}: directory is not root:root 700` },
      ]);
      expect(a.names()).not.toContain('open');
    }
    fs.rmSync(dir, { recursive: true });
    fs.writeFileSync(dir, 'file in the way');
    expect(await refusal(writeFileAtomicSftp(localSftp().sftp, target, Buffer.from('x')))).toEqual({
      code: 'remote_file_unsafe',
      message: `${dir}: exists and is not a directory`,
    });
  });

  itRoot('checks the renamed file: type, owner, group, mode and size, each exactly', async () => {
    const cases: [(st: Stats) => Stats, string][] = [
      [(st) => ({ ...st, mode: S_IFLNK | 0o600 }) as Stats, 'is not a regular file after the rename'],
      [(st) => ({ ...st, uid: 1000 }) as Stats, 'is owned by 1000:0, not root:root'],
      [(st) => ({ ...st, gid: 1001 }) as Stats, 'is owned by 0:1001, not root:root'],
      [(st) => ({ ...st, mode: (st.mode & ~0o7777) | 0o4600 }) as Stats, 'has mode 4600, not 600'],
      [(st) => ({ ...st, size: st.size + 1 }) as Stats, 'has 3 bytes, 2 were written'],
      [(st) => ({ ...st, size: st.size - 1 }) as Stats, 'has 1 bytes, 2 were written'],
    ];
    for (const [change, what] of cases) {
      const a = localSftp({ lstat: (p, st) => (p === target ? change(st) : st) });
      expect(await refusal(writeFileAtomicSftp(a.sftp, target, Buffer.from('ab')))).toEqual({
        code: 'remote_file_unsafe',
        message: `${target}: ${what}`,
      });
    }
    await expect(writeFileAtomicSftp(localSftp().sftp, target, Buffer.from('ab'))).resolves.toEqual({
      removedTemps: [],
    });
  });

  it.each(['write', 'fsync', 'close', 'rename'])(
    'a failure at %s closes the temp file exactly once and removes it',
    async (step) => {
      fs.mkdirSync(dir, { mode: 0o700 });
      const a = localSftp({ failAt: step });
      if (process.geteuid?.() !== 0)
        (a.sftp as unknown as Record<string, unknown>).fchown = (...args: unknown[]) =>
          (args.at(-1) as () => void)();
      await expect(writeFileAtomicSftp(a.sftp, target, Buffer.from('new'))).rejects.toThrow(
        `injected failure at ${step}`,
      );
      const names = a.names();
      expect(names.filter((n) => n === 'close')).toHaveLength(1);
      const unlinks = a.log.filter((c) => c.name === 'unlink');
      expect(unlinks).toHaveLength(1);
      expect(String(unlinks[0]?.args[0])).toMatch(/\/\.agent\.env\.tmp-[0-9a-f]{16}$/);
      expect(fs.readdirSync(dir)).toEqual([]);
    },
  );
});
