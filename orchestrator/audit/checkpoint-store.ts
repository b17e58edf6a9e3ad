import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, mkdir, open, readFile, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { OrchestratorError } from '../errors';

/**
 * Port: where signed audit checkpoints are kept, outside the database. Checkpoints are write-once:
 * `put` never replaces one, and a store in production should make that true for whoever holds its
 * credentials as well (an object store bucket with object lock / retention in compliance mode),
 * since deleting the newest checkpoints rolls verification back to an older one.
 *
 * Adapters: `file://<dir>` (below; the default, `<CORTEX_STATE_DIR>/audit-checkpoints`). An
 * object-store adapter (`s3://bucket/prefix`) implements the same two calls (PutObject with
 * `If-None-Match: *`; ListObjectsV2 and GetObject for the greatest key) and is chosen by
 * `AUDIT_CHECKPOINT_STORE` in `makeCheckpointStoreFromUrl`.
 */
export interface CheckpointStore {
  /** Stores a new checkpoint; refuses (`conflict`) if one of that name exists. */
  put(name: string, body: string): Promise<void>;
  /** The newest checkpoint (greatest name), or null when there is none. */
  newest(): Promise<{ name: string; body: string } | null>;
  /** Human-readable location, for messages. */
  readonly location: string;
}

/** Names sort by time: `checkpoint-20261130T023000.123456Z-<8 hex>.json`. */
export const CHECKPOINT_NAME = /^checkpoint-(\d{8}T\d{6}\.\d{6}Z)-[0-9a-f]{8}\.json$/;

export const checkpointName = (at: string): string =>
  `checkpoint-${at.replace(/[-:]/g, '')}-${randomBytes(4).toString('hex')}.json`;

/** The time a checkpoint's name claims, in the payload's form (`2026-11-30T02:30:00.123456Z`). */
export const timeOfName = (name: string): string | null => {
  const t = CHECKPOINT_NAME.exec(name)?.[1];
  return t
    ? `${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(9, 11)}:${t.slice(11, 13)}:${t.slice(13)}`
    : null;
};

const errnoOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException).code;

/** One JSON file per checkpoint, written to a temporary file, fsynced, then hard-linked into place. */
export const makeFileCheckpointStore = (dir: string): CheckpointStore => {
  const put = async (name: string, body: string): Promise<void> => {
    if (!CHECKPOINT_NAME.test(name))
      throw new OrchestratorError(
        'internal',
        `checkpoint store: bad checkpoint name ${JSON.stringify(name)}`,
      );
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.tmp-${randomBytes(8).toString('hex')}`);
    const fh = await open(
      tmp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o644,
    );
    try {
      try {
        await fh.writeFile(body, 'utf8');
        await fh.sync();
      } finally {
        await fh.close();
      }
      // link(2), unlike rename(2), fails when the target exists: a checkpoint is never overwritten.
      try {
        await link(tmp, join(dir, name));
      } catch (err) {
        if (errnoOf(err) === 'EEXIST')
          throw new OrchestratorError('conflict', `checkpoint ${name} already exists in ${dir}`);
        throw err;
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    const d = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  };

  const newest = async (): Promise<{ name: string; body: string } | null> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return null;
      throw err;
    }
    const name = names
      .filter((n) => CHECKPOINT_NAME.test(n))
      .sort()
      .at(-1);
    if (name === undefined) return null;
    return { name, body: await readFile(join(dir, name), 'utf8') };
  };

  return { put, newest, location: dir };
};

/** Chooses the adapter `AUDIT_CHECKPOINT_STORE` names (config.ts accepts `file://` only, for now). */
export const makeCheckpointStoreFromUrl = (url: string): CheckpointStore => {
  if (url.startsWith('file://')) return makeFileCheckpointStore(url.slice('file://'.length));
  // The place for the object-store adapter (s3://bucket/prefix) in production.
  throw new OrchestratorError('config_invalid', 'AUDIT_CHECKPOINT_STORE: only file://<dir> is supported yet');
};
