import { readFile, readdir } from 'node:fs/promises';
import { errno, sleep } from './exec';

/** Process facts read from /proc: start times (pids are reused), liveness, and container leaders. */

/** Field 22 of /proc/<pid>/stat, in clock ticks since boot; with the pid it names one process. */
export const procStartTime = async (pid: number): Promise<string | undefined> => {
  const s = await readProcStat(pid);
  return s?.startTime;
};

const readProcStat = async (pid: number): Promise<{ state: string; startTime: string } | undefined> => {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after its closing paren.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const state = fields[0];
    const startTime = fields[19];
    return state === undefined || startTime === undefined ? undefined : { state, startTime };
  } catch (err) {
    if (errno(err) === 'ENOENT' || errno(err) === 'ESRCH') return undefined;
    throw err;
  }
};

/** Alive: exists, is the same process (start time), and is not a zombie. */
export const isProcessAlive = async (
  pid: number | undefined,
  startTime: string | undefined,
): Promise<boolean> => {
  if (pid === undefined) return false;
  const s = await readProcStat(pid);
  return s !== undefined && s.state !== 'Z' && (startTime === undefined || s.startTime === startTime);
};

export const readCmdline = async (pid: number): Promise<string[] | undefined> => {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
  } catch {
    return undefined;
  }
};

export const allPids = async (): Promise<number[]> =>
  (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);

/**
 * `fn` over `items` with at most `limit` running at once: 50 hosts have a few thousand processes,
 * and reading all their /proc files at once exhausts the file descriptor limit (EMFILE).
 */
export const mapLimit = async <T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> => {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
};

/** systemd-nspawn processes whose `--directory=` lies under `dirPrefix`, with that directory. */
export const findNspawnProcesses = async (
  dirPrefix: string,
): Promise<{ pid: number; directory: string }[]> => {
  const found: { pid: number; directory: string }[] = [];
  await mapLimit(await allPids(), 8, async (pid) => {
    const argv = await readCmdline(pid);
    if (!argv?.[0]?.endsWith('systemd-nspawn')) return;
    const dir = argv.find((a) => a.startsWith('--directory='))?.slice('--directory='.length);
    if (dir?.startsWith(dirPrefix)) found.push({ pid, directory: dir });
  });
  return found;
};

/**
 * The container's PID 1 (its systemd) among `pids`: the process that is pid 1 in a pid namespace
 * below ours (`NSpid: <host pid> 1`).
 */
export const findContainerLeader = async (pids: readonly number[]): Promise<number | undefined> => {
  for (const pid of pids) {
    try {
      const status = await readFile(`/proc/${pid}/status`, 'utf8');
      const nspid = /^NSpid:\s+(.+)$/m.exec(status)?.[1]?.trim().split(/\s+/);
      if (nspid && nspid.length > 1 && nspid[nspid.length - 1] === '1') return pid;
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
};

/** Children of a process (Linux keeps them in /proc/<pid>/task/<pid>/children). */
export const childPids = async (pid: number): Promise<number[]> => {
  try {
    const raw = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    return raw.split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

export const signalPids = (pids: readonly number[], signal: NodeJS.Signals): void => {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (err) {
      if (errno(err) !== 'ESRCH') throw err;
    }
  }
};

/** Poll until `check` is true or the time is up; returns whether it became true. */
export const waitFor = async (
  check: () => Promise<boolean>,
  timeoutMs: number,
  intervalMs = 50,
): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
};
