import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { OrchestratorError } from '../../errors';
import { errno, run } from './exec';
import { acquireFileLock, withFileLock } from './lock';
import { listHostRecords, localPaths } from './state';

/**
 * The base image of local hosts, built by scripts/image/build.sh (the recipe) and cached under
 * `<state>/image/<recipe hash>/`:
 *
 *   rootfs/          the root file system every host's overlay reads from
 *   recipe.sha256    hash of everything under scripts/image/ (the image's identity)
 *   build.json       mirror, build time, duration
 *
 * A build runs into `.build-<hash>-<pid>/` and is renamed into place when complete, so a crashed
 * build never leaves a half image; a changed recipe gets a new directory, and older images are
 * pruned once no host uses them (hosts keep reading their image while they live).
 */
export const IMAGE_RECIPE_DIR = resolve(__dirname, '../../../scripts/image');

export interface LocalImage {
  readonly hash: string;
  readonly dir: string;
  readonly rootfs: string;
}

export const recipeHash = async (recipeDir = IMAGE_RECIPE_DIR): Promise<string> => {
  const files: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else files.push(join(d, e.name));
    }
  };
  await walk(recipeDir);
  const h = createHash('sha256');
  for (const f of files.sort()) {
    const s = await stat(f);
    // Path, mode and content: `chmod -x` on the recipe is a change too.
    h.update(`${relative(recipeDir, f)}\0${(s.mode & 0o777).toString(8)}\0`);
    h.update(await readFile(f));
    h.update('\0');
  }
  return h.digest('hex');
};

export const imageDirFor = (stateDir: string, hash: string): string =>
  join(localPaths(stateDir).image, hash.slice(0, 16));

/** The image of the current recipe, if it has been built. */
export const findLocalImage = async (
  stateDir: string,
  recipeDir = IMAGE_RECIPE_DIR,
): Promise<LocalImage | undefined> => {
  const hash = await recipeHash(recipeDir);
  const dir = imageDirFor(stateDir, hash);
  try {
    if ((await readFile(join(dir, 'recipe.sha256'), 'utf8')).trim() !== hash) return undefined;
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw err;
  }
  return { hash, dir, rootfs: join(dir, 'rootfs') };
};

export interface AptMirrors {
  readonly main: string;
  readonly security?: string;
}

interface AptEntry {
  types: string[];
  uris: string[];
  suites: string[];
}

const parseDeb822 = (text: string): AptEntry[] =>
  text
    .split(/\n\s*\n/)
    .map((stanza) => {
      const fields = new Map<string, string>();
      for (const line of stanza.split('\n')) {
        const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
        if (m?.[1] && m[2] !== undefined && !line.startsWith('#')) fields.set(m[1].toLowerCase(), m[2]);
      }
      const list = (k: string): string[] => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
      return {
        types: list('types'),
        uris: list('uris'),
        suites: list('suites'),
        enabled: fields.get('enabled'),
      };
    })
    .filter((e) => e.enabled !== 'no' && e.types.includes('deb') && e.uris.length > 0);

const parseOneLine = (text: string): AptEntry[] =>
  text.split('\n').flatMap((raw) => {
    const line = raw
      .replace(/#.*/, '')
      .replace(/\[[^\]]*\]/, ' ')
      .trim();
    const [type, uri, suite] = line.split(/\s+/);
    return type === 'deb' && uri && suite ? [{ types: ['deb'], uris: [uri], suites: [suite] }] : [];
  });

/**
 * The Debian mirrors this machine's apt uses (deb822 `*.sources` and one-line `*.list` files), for
 * the image's suite: the main archive (an entry carrying `suite`, or else a `…/debian` URI) and the
 * security archive (an entry with a `*-security` suite), if any.
 */
export const parseAptSources = (
  files: readonly { name: string; text: string }[],
  suite: string,
): AptMirrors | undefined => {
  const entries = files.flatMap((f) =>
    f.name.endsWith('.sources') ? parseDeb822(f.text) : f.name.endsWith('.list') ? parseOneLine(f.text) : [],
  );
  const isSecurity = (e: AptEntry): boolean => e.suites.some((s) => s.endsWith('-security'));
  const main =
    entries.find((e) => !isSecurity(e) && e.suites.includes(suite)) ??
    entries.find((e) => !isSecurity(e) && e.uris.some((u) => /\/debian\/?$/.test(u)));
  const security = entries.find(isSecurity);
  const first = main?.uris[0];
  if (!first) return undefined;
  return { main: first, ...(security?.uris[0] ? { security: security.uris[0] } : {}) };
};

export const readAptMirrors = async (suite: string, aptDir = '/etc/apt'): Promise<AptMirrors> => {
  const files: { name: string; text: string }[] = [];
  const add = async (p: string): Promise<void> => {
    try {
      files.push({ name: p, text: await readFile(p, 'utf8') });
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
  };
  await add(join(aptDir, 'sources.list'));
  let parts: string[] = [];
  try {
    parts = (await readdir(join(aptDir, 'sources.list.d'))).sort();
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
  for (const p of parts) await add(join(aptDir, 'sources.list.d', p));
  const mirrors = parseAptSources(files, suite);
  if (!mirrors)
    throw new OrchestratorError(
      'local_unsupported',
      `no Debian mirror found in ${aptDir}/sources.list{,.d}: the base image is built from the mirror apt uses here`,
    );
  return mirrors;
};

const recipeSuite = async (recipeDir: string): Promise<string> => {
  const m = /^SUITE=([a-z]+)$/m.exec(await readFile(join(recipeDir, 'build.sh'), 'utf8'));
  if (!m?.[1]) throw new OrchestratorError('internal', `${recipeDir}/build.sh has no SUITE= line`);
  return m[1];
};

/** Unmount anything left mounted below `dir` (a crashed build's /proc, /sys, /dev binds), deepest first. */
export const unmountBelow = async (dir: string): Promise<void> => {
  const mounts = (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' ') ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    const r = await run('umount', [m], { allowFailure: true });
    if (r.code !== 0) await run('umount', ['--lazy', m]);
  }
};

/** rm -rf that never crosses into a mount: a bind of /dev under a half-built image stays untouched. */
const removeTree = async (dir: string): Promise<void> => {
  await unmountBelow(dir);
  await run('rm', ['-rf', '--one-file-system', dir], { timeoutMs: 600_000 });
};

export interface EnsureImageOptions {
  readonly stateDir: string;
  /** Rebuild even when the current recipe's image exists (refused while hosts use it). */
  readonly force?: boolean;
  /** Build output (debootstrap, apt) goes here line by line; default: discarded. */
  readonly onOutput?: (chunk: string) => void;
  readonly recipeDir?: string;
}

/** Build the image of the current recipe unless it is there; one builder at a time per state dir. */
export const ensureLocalImage = async (
  opts: EnsureImageOptions,
): Promise<LocalImage & { built: boolean; seconds: number }> => {
  const recipeDir = opts.recipeDir ?? IMAGE_RECIPE_DIR;
  const started = Date.now();
  const done = (img: LocalImage, built: boolean) => ({
    ...img,
    built,
    seconds: (Date.now() - started) / 1000,
  });
  const existing = await findLocalImage(opts.stateDir, recipeDir);
  if (existing && !opts.force) return done(existing, false);

  const paths = localPaths(opts.stateDir);
  await mkdir(paths.image, { recursive: true, mode: 0o755 });
  return withFileLock(join(paths.image, '.build.lock'), async () => {
    const again = await findLocalImage(opts.stateDir, recipeDir);
    if (again && !opts.force) return done(again, false);
    const hash = await recipeHash(recipeDir);
    const dir = imageDirFor(opts.stateDir, hash);

    // We hold the build lock: any other build directory is a crashed build's.
    for (const n of await readdir(paths.image))
      if (n.startsWith('.build-')) await removeTree(join(paths.image, n));

    const suite = await recipeSuite(recipeDir);
    const mirrors = await readAptMirrors(suite);
    const tmp = join(paths.image, `.build-${hash.slice(0, 16)}-${process.pid}`);
    await mkdir(join(tmp, 'rootfs'), { recursive: true, mode: 0o755 });
    try {
      await runBuild(recipeDir, join(tmp, 'rootfs'), mirrors, opts.onOutput);
      await writeFile(join(tmp, 'recipe.sha256'), `${hash}\n`);
      const seconds = (Date.now() - started) / 1000;
      await writeFile(
        join(tmp, 'build.json'),
        `${JSON.stringify({ hash, suite, mirrors, builtAt: new Date().toISOString(), seconds }, null, 2)}\n`,
      );
      if (again) {
        // --force over an existing image: only when no host reads it.
        const users = (await listHostRecords(paths)).filter((r) => r.image.startsWith(`${dir}/`));
        if (users.length > 0)
          throw new OrchestratorError(
            'conflict',
            `image ${dir} is in use by ${users.length} host(s): destroy them (npm run local:cleanup) before --force`,
          );
        await removeTree(dir);
      }
      await rename(tmp, dir);
    } catch (err) {
      await removeTree(tmp);
      throw err;
    }
    await pointCurrent(paths.image, hash.slice(0, 16));
    await pruneLocalImages(opts.stateDir, dir);
    return done({ hash, dir, rootfs: join(dir, 'rootfs') }, true);
  });
};

const runBuild = (
  recipeDir: string,
  rootfs: string,
  mirrors: AptMirrors,
  onOutput?: (s: string) => void,
): Promise<void> =>
  new Promise((resolvePromise, reject) => {
    const args = [
      join(recipeDir, 'build.sh'),
      rootfs,
      mirrors.main,
      ...(mirrors.security ? [mirrors.security] : []),
    ];
    const child = spawn('bash', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    const onData = (d: Buffer): void => {
      const s = d.toString();
      tail = (tail + s).slice(-4000);
      onOutput?.(s);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0
        ? resolvePromise()
        : reject(new OrchestratorError('internal', `image build failed (exit ${String(code)}):\n${tail}`)),
    );
  });

/** `<state>/image/current -> <hash>`: for people and scripts; the provider resolves by recipe hash. */
const pointCurrent = async (imageDir: string, name: string): Promise<void> => {
  const tmp = join(imageDir, `.current.${process.pid}`);
  await rm(tmp, { force: true });
  await symlink(name, tmp);
  await rename(tmp, join(imageDir, 'current'));
};

/** Remove images other than `keep` that no host of this state dir reads. */
export const pruneLocalImages = async (stateDir: string, keep: string): Promise<string[]> => {
  const paths = localPaths(stateDir);
  const inUse = (await listHostRecords(paths)).map((r) => r.image);
  const removed: string[] = [];
  for (const n of await readdir(paths.image)) {
    const dir = join(paths.image, n);
    if (!/^[0-9a-f]{16}$/.test(n) || dir === keep || inUse.some((i) => i.startsWith(`${dir}/`))) continue;
    await removeTree(dir);
    removed.push(dir);
  }
  return removed;
};

/**
 * Leftovers of crashed image builds: `.build-*` directories (with their /proc, /sys and /dev binds
 * unmounted first) and temp symlinks. Skipped while a build holds the lock; returns what went.
 */
export const cleanupImageBuilds = async (stateDir: string): Promise<string[]> => {
  const paths = localPaths(stateDir);
  let names: string[];
  try {
    names = await readdir(paths.image);
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
  const leftovers = names.filter((n) => n.startsWith('.build-') || n.startsWith('.current.'));
  if (leftovers.length === 0) return [];
  const release = await acquireFileLock(join(paths.image, '.build.lock'), { timeoutMs: 1_000 }).catch(
    () => undefined,
  );
  if (!release) return [];
  try {
    for (const n of leftovers) await removeTree(join(paths.image, n));
    return leftovers.map((n) => join(paths.image, n));
  } finally {
    await release();
  }
};
