import { makeReadCoalescer } from '../../../orchestrator/api/read-coalescer';

/**
 * The deployment read's coalescing (read-coalescer.ts): a caller is only ever answered by a read
 * started after it arrived, reads of one key are shared by the callers that arrived before they
 * started, other keys are independent, a failure reaches exactly its callers, nothing is kept.
 */
const controlled = () => {
  const started: { key: string; resolve: (v: string) => void; reject: (e: Error) => void }[] = [];
  const fetch = (key: string): Promise<string> =>
    new Promise((resolve, reject) => started.push({ key, resolve, reject }));
  return { started, c: makeReadCoalescer(fetch) };
};
const tick = () => new Promise((r) => setImmediate(r));

describe('read coalescer', () => {
  it('a caller that arrives while a read is in flight is NOT answered by it, but by the next read', async () => {
    const { started, c } = controlled();
    const first = c.read('d1');
    expect(started).toHaveLength(1);
    // the database state changes (a status change committed), then a request arrives
    const late = c.read('d1');
    let lateValue: string | undefined;
    void late.then((v) => (lateValue = v));
    started[0]?.resolve('before the change');
    expect(await first).toBe('before the change');
    await tick();
    // the late caller was not served the read sent before it arrived...
    expect(lateValue).toBeUndefined();
    // ...a second read was started for it, after it arrived
    expect(started).toHaveLength(2);
    started[1]?.resolve('after the change');
    expect(await late).toBe('after the change');
  });

  it('every caller that arrived before a read started shares it: one read for many callers', async () => {
    const { started, c } = controlled();
    const a = c.read('d1');
    const queued = [c.read('d1'), c.read('d1'), c.read('d1')];
    started[0]?.resolve('v1');
    await tick();
    expect(started).toHaveLength(2);
    // arrived after the second read started: a third one, not the second
    const after = c.read('d1');
    started[1]?.resolve('v2');
    await tick();
    expect(started).toHaveLength(3);
    started[2]?.resolve('v3');
    expect(await a).toBe('v1');
    expect(await Promise.all(queued)).toEqual(['v2', 'v2', 'v2']);
    expect(await after).toBe('v3');
    expect(c.stats()).toEqual({ reads: 3, calls: 5, keys: 0 });
  });

  it('other keys are read independently and at once', async () => {
    const { started, c } = controlled();
    const a = c.read('d1');
    const b = c.read('d2');
    expect(started.map((s) => s.key)).toEqual(['d1', 'd2']);
    started[1]?.resolve('two');
    started[0]?.resolve('one');
    expect([await a, await b]).toEqual(['one', 'two']);
  });

  it('a failed read fails its own callers only; the callers queued behind it get a read of their own', async () => {
    const { started, c } = controlled();
    const a = c.read('d1');
    const b = c.read('d1');
    started[0]?.reject(new Error('not found'));
    await expect(a).rejects.toThrow('not found');
    await tick();
    expect(started).toHaveLength(2);
    started[1]?.resolve('created meanwhile');
    expect(await b).toBe('created meanwhile');
  });

  it('nothing is kept: a caller after everything settled starts a new read', async () => {
    const { started, c } = controlled();
    const a = c.read('d1');
    started[0]?.resolve('v1');
    await a;
    await tick();
    expect(c.stats().keys).toBe(0);
    const b = c.read('d1');
    expect(started).toHaveLength(2);
    started[1]?.resolve('v2');
    expect(await b).toBe('v2');
  });

  it('a fetch that throws synchronously fails its callers only: the key is free again and the next read fetches (review R4)', async () => {
    const started: ((v: string) => void)[] = [];
    let n = 0;
    const c = makeReadCoalescer((): Promise<string> => {
      n += 1;
      if (n === 2) throw new Error('bad input');
      return new Promise((resolve) => started.push(resolve));
    });
    const first = c.read('x');
    const second = c.read('x'); // queued behind the first: its fetch throws
    started[0]?.('one');
    expect(await first).toBe('one');
    await expect(second).rejects.toThrow('bad input');
    await tick();
    expect(c.stats().keys).toBe(0);
    const third = c.read('x');
    expect(n).toBe(3);
    started[1]?.('three');
    expect(await third).toBe('three');
  });

  it('a read in flight longer than staleMs (a dead connection) is not waited for: a later caller reads on its own (review R4)', async () => {
    let t = 0;
    const started: { resolve: (v: string) => void }[] = [];
    const c = makeReadCoalescer((): Promise<string> => new Promise((resolve) => started.push({ resolve })), {
      staleMs: 1_000,
      now: () => t,
    });
    const stuck = c.read('x'); // never answered
    t = 500;
    const queued = c.read('x'); // within the bound: waits for the next read, as before
    expect(started).toHaveLength(1);
    t = 1_500;
    const later = c.read('x');
    expect(started).toHaveLength(2);
    started[1]?.resolve('fresh');
    expect(await later).toBe('fresh');
    void stuck;
    void queued;
  });
});
