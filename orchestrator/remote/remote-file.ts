import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import type { SFTPWrapper, Stats } from 'ssh2';
import { OrchestratorError, invalidInput } from '../errors';

/**
 * Atomic file replacement over SFTP (invariant 4). The sequence, each step awaited:
 *
 *   ensure parent dir (root:root, dirMode) → remove temp files of earlier, interrupted writes →
 *   open(tmp, 'wx', 0600) → write → fsync → fchown(0, 0) [→ fchmod(mode) if not 0600] → close →
 *   POSIX rename(tmp, path) → lstat(path) and verify type, owner, group and mode.
 *
 * The temp file is born 0600 (O_EXCL, so never an existing file or link) and is only renamed over
 * the target once complete and on disk, so a cut connection leaves the previous file intact and at
 * worst a temp file, which the next write to the same directory removes.
 */
export type SftpOps = Pick<
  SFTPWrapper,
  | 'open'
  | 'write'
  | 'close'
  | 'fchown'
  | 'fchmod'
  | 'ext_openssh_fsync'
  | 'ext_openssh_rename'
  | 'lstat'
  | 'mkdir'
  | 'setstat'
  | 'readdir'
  | 'unlink'
>;

export type FileMode = 0o600 | 0o644 | 0o755;
export type DirMode = 0o700 | 0o755;

export interface AtomicWriteOptions {
  /** Final mode of the file; the temp file is 0600 whatever this is. Default 0600. */
  readonly mode?: FileMode;
  /** Mode the parent directory must have (it is created or corrected to it). Default 0700. */
  readonly dirMode?: DirMode;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const WRITE_CHUNK = 32 * 1024;

/** `.agent.env.tmp-<hex>`: hidden, beside the target (same file system, so rename is atomic). */
export const tempNameFor = (base: string): string => `.${base}.tmp-${randomBytes(8).toString('hex')}`;
export const isTempNameFor = (base: string, entry: string): boolean =>
  entry.startsWith(`.${base}.tmp-`) && /^[0-9a-f]{16}$/.test(entry.slice(base.length + 6));

export const checkRemotePath = (path: string): { dir: string; base: string } => {
  if (
    typeof path !== 'string' ||
    !path.startsWith('/') ||
    path.includes('\0') ||
    posix.normalize(path) !== path ||
    path.endsWith('/')
  )
    throw invalidInput('path', 'must be an absolute, normalised file path');
  const dir = posix.dirname(path);
  if (dir === '/') throw invalidInput('path', 'must be inside a directory other than /');
  return { dir, base: posix.basename(path) };
};

const call = <T>(fn: (cb: (err: Error | undefined | null, value: T) => void) => void): Promise<T> =>
  new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));

const sftpCode = (err: unknown): number | undefined =>
  (err as { code?: unknown })?.code as number | undefined;
const NO_SUCH_FILE = 2;

const unsafe = (path: string, what: string): OrchestratorError =>
  new OrchestratorError('remote_file_unsafe', `${path}: ${what}`);

const ensureDir = async (sftp: SftpOps, dir: string, dirMode: DirMode): Promise<void> => {
  let st: Stats | undefined;
  try {
    st = await call<Stats>((cb) => sftp.lstat(dir, cb));
  } catch (err) {
    if (sftpCode(err) !== NO_SUCH_FILE) throw err;
  }
  if (!st) {
    await call<void>((cb) => sftp.mkdir(dir, { mode: dirMode }, (e) => cb(e, undefined)));
    st = await call<Stats>((cb) => sftp.lstat(dir, cb));
  }
  if ((st.mode & S_IFMT) !== S_IFDIR) throw unsafe(dir, 'exists and is not a directory');
  if (st.uid !== 0 || st.gid !== 0 || (st.mode & 0o7777) !== dirMode) {
    // Correct, then verify: a directory someone else made is taken over only if we can make it ours.
    await call<void>((cb) => sftp.setstat(dir, { uid: 0, gid: 0, mode: dirMode }, (e) => cb(e, undefined)));
    const again = await call<Stats>((cb) => sftp.lstat(dir, cb));
    if (
      again.uid !== 0 ||
      again.gid !== 0 ||
      (again.mode & 0o7777) !== dirMode ||
      (again.mode & S_IFMT) !== S_IFDIR
    )
      throw unsafe(dir, `directory is not root:root ${dirMode.toString(8)}`);
  }
};

const removeStaleTemps = async (sftp: SftpOps, dir: string, base: string): Promise<string[]> => {
  const list = await call<{ filename: string }[]>((cb) => sftp.readdir(dir, cb));
  const stale = list.map((e) => e.filename).filter((f) => isTempNameFor(base, f));
  for (const f of stale) await call<void>((cb) => sftp.unlink(posix.join(dir, f), (e) => cb(e, undefined)));
  return stale;
};

export const writeFileAtomicSftp = async (
  sftp: SftpOps,
  path: string,
  content: Buffer,
  opts: AtomicWriteOptions = {},
): Promise<{ removedTemps: string[] }> => {
  const { dir, base } = checkRemotePath(path);
  const mode = opts.mode ?? 0o600;
  const dirMode = opts.dirMode ?? 0o700;
  await ensureDir(sftp, dir, dirMode);
  const removedTemps = await removeStaleTemps(sftp, dir, base);

  const tmp = posix.join(dir, tempNameFor(base));
  const handle = await call<Buffer>((cb) => sftp.open(tmp, 'wx', { mode: 0o600 }, cb));
  let closed = false;
  try {
    for (let off = 0; off < content.length; off += WRITE_CHUNK) {
      const len = Math.min(WRITE_CHUNK, content.length - off);
      await call<void>((cb) => sftp.write(handle, content, off, len, off, (e) => cb(e, undefined)));
    }
    await call<unknown>((cb) => sftp.ext_openssh_fsync(handle, cb));
    await call<void>((cb) => sftp.fchown(handle, 0, 0, (e) => cb(e, undefined)));
    if (mode !== 0o600) await call<void>((cb) => sftp.fchmod(handle, mode, (e) => cb(e, undefined)));
    closed = true;
    await call<void>((cb) => sftp.close(handle, (e) => cb(e, undefined)));
    await call<void>((cb) => sftp.ext_openssh_rename(tmp, path, (e) => cb(e, undefined)));
  } catch (err) {
    // Best effort on a live session; on a dead one the next write removes the temp file.
    if (!closed) await call<void>((cb) => sftp.close(handle, (e) => cb(e, undefined))).catch(() => undefined);
    await call<void>((cb) => sftp.unlink(tmp, (e) => cb(e, undefined))).catch(() => undefined);
    throw err;
  }

  const st = await call<Stats>((cb) => sftp.lstat(path, cb));
  if ((st.mode & S_IFMT) !== S_IFREG) throw unsafe(path, 'is not a regular file after the rename');
  if (st.uid !== 0 || st.gid !== 0) throw unsafe(path, `is owned by ${st.uid}:${st.gid}, not root:root`);
  if ((st.mode & 0o7777) !== mode)
    throw unsafe(path, `has mode ${(st.mode & 0o7777).toString(8)}, not ${mode.toString(8)}`);
  if (st.size !== content.length) throw unsafe(path, `has ${st.size} bytes, ${content.length} were written`);
  return { removedTemps };
};
