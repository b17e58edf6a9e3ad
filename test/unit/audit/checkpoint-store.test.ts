import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkpointName,
  makeCheckpointStoreFromUrl,
  makeFileCheckpointStore,
  timeOfName,
} from '../../../orchestrator/audit/checkpoint-store';
import { rejection } from '../../support/rejection';

describe('file checkpoint store', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cps-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('names checkpoints so that they sort by time, and reads the time back', () => {
    const a = checkpointName('2026-11-30T02:30:00.000001Z');
    const b = checkpointName('2026-11-30T02:30:00.000010Z');
    const c = checkpointName('2026-12-01T00:00:00.000000Z');
    expect([c, a, b].sort()).toEqual([a, b, c]);
    expect(timeOfName(a)).toBe('2026-11-30T02:30:00.000001Z');
    expect(timeOfName('checkpoint-../../etc.json')).toBeNull();
  });

  it('has nothing before the first checkpoint, even without its directory', async () => {
    expect(await makeFileCheckpointStore(join(dir, 'not-yet')).newest()).toBeNull();
  });

  it('writes one file per checkpoint, leaves no temporary file, and returns the newest', async () => {
    const store = makeFileCheckpointStore(join(dir, 'cp'));
    const older = checkpointName('2026-11-30T02:30:00.000000Z');
    const newer = checkpointName('2026-11-30T03:30:00.000000Z');
    await store.put(newer, 'B');
    await store.put(older, 'A');
    writeFileSync(join(dir, 'cp', 'zzz-not-a-checkpoint.json'), 'X');
    expect(await store.newest()).toEqual({ name: newer, body: 'B' });
    expect(readdirSync(join(dir, 'cp')).sort()).toEqual([older, newer, 'zzz-not-a-checkpoint.json'].sort());
  });

  it('never overwrites a checkpoint', async () => {
    const store = makeFileCheckpointStore(dir);
    const name = checkpointName('2026-11-30T02:30:00.000000Z');
    await store.put(name, 'first');
    expect((await rejection(store.put(name, 'second'))).code).toBe('conflict');
    expect(readFileSync(join(dir, name), 'utf8')).toBe('first');
    expect(readdirSync(dir)).toEqual([name]);
  });

  it('refuses names that are not checkpoint names (no path can be smuggled in)', async () => {
    const store = makeFileCheckpointStore(dir);
    expect((await rejection(store.put('../x.json', 'x'))).code).toBe('internal');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('is chosen by URL; other schemes are refused until their adapter exists', () => {
    expect(makeCheckpointStoreFromUrl(`file://${dir}`).location).toBe(dir);
    expect(() => makeCheckpointStoreFromUrl('s3://bucket/prefix')).toThrow(/only file:/);
  });
});
