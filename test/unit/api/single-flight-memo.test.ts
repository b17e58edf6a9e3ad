import { makeSingleFlightMemo } from '../../../orchestrator/api/single-flight-memo';

/** The helper behind /readyz and the audit chain verification (review R15 F2, F3), on a fake clock. */
const deferred = <T>() => {
  let resolve: (v: T) => void = () => undefined;
  let reject: (e: Error) => void = () => undefined;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};

const setup = (opts: { ttlMs: number; maxKeys: number; keep?: (v: string) => boolean }) => {
  let clock = 1_000;
  const runs: string[] = [];
  let answer: (key: string) => Promise<string> = async (key) => `v-${key}`;
  const memo = makeSingleFlightMemo(
    (key) => {
      runs.push(key);
      return answer(key);
    },
    { ...opts, now: () => clock },
  );
  return {
    memo,
    runs,
    advance: (ms: number) => (clock += ms),
    answerWith: (f: typeof answer) => (answer = f),
  };
};

describe('makeSingleFlightMemo', () => {
  it('keeps a result for ttlMs after its run ends, with the time its run started', async () => {
    const s = setup({ ttlMs: 30_000, maxKeys: 10 });
    const d = deferred<string>();
    s.answerWith(() => d.promise);
    const first = s.memo.get('a');
    s.advance(5_000); // the run takes 5 s
    d.resolve('v1');
    expect(await first).toEqual({ value: 'v1', at: 1_000 });
    s.advance(29_999);
    expect(await s.memo.get('a')).toEqual({ value: 'v1', at: 1_000 });
    expect(s.runs).toEqual(['a']);
    // 30 s after the run ENDED (not started): a new run
    s.advance(1);
    s.answerWith(async () => 'v2');
    expect(await s.memo.get('a')).toEqual({ value: 'v2', at: 36_000 });
    expect(s.runs).toEqual(['a', 'a']);
  });

  it('callers during a run share it; a rejection reaches all of them and is not kept', async () => {
    const s = setup({ ttlMs: 30_000, maxKeys: 10 });
    const d = deferred<string>();
    s.answerWith(() => d.promise);
    const waiting = [s.memo.get('a'), s.memo.get('a'), s.memo.get('a')];
    expect(s.memo.stats()).toEqual({ runs: 1, kept: 0, inflight: 1 });
    d.reject(new Error('boom'));
    for (const w of waiting) await expect(w).rejects.toThrow('boom');
    expect(s.memo.stats()).toEqual({ runs: 1, kept: 0, inflight: 0 });
    s.answerWith(async () => 'ok');
    expect((await s.memo.get('a')).value).toBe('ok');
    expect(s.runs).toEqual(['a', 'a']);
  });

  it('a run that throws synchronously rejects and frees the key', async () => {
    const s = setup({ ttlMs: 30_000, maxKeys: 10 });
    s.answerWith(() => {
      throw new Error('sync');
    });
    await expect(s.memo.get('a')).rejects.toThrow('sync');
    expect(s.memo.stats().inflight).toBe(0);
  });

  it('a value keep refuses answers its callers only', async () => {
    const s = setup({ ttlMs: 30_000, maxKeys: 10, keep: (v) => v !== 'broken' });
    s.answerWith(async () => 'broken');
    expect((await s.memo.get('a')).value).toBe('broken');
    expect((await s.memo.get('a')).value).toBe('broken');
    expect(s.runs).toEqual(['a', 'a']);
  });

  it('keeps at most maxKeys results, dropping the one kept longest', async () => {
    const s = setup({ ttlMs: 30_000, maxKeys: 2 });
    await s.memo.get('a');
    s.advance(1);
    await s.memo.get('b');
    s.advance(1);
    await s.memo.get('c');
    expect(s.memo.stats().kept).toBe(2);
    await s.memo.get('b');
    await s.memo.get('c');
    expect(s.runs).toEqual(['a', 'b', 'c']);
    await s.memo.get('a'); // dropped: runs again (and now 'b' is the oldest)
    expect(s.runs).toEqual(['a', 'b', 'c', 'a']);
    await s.memo.get('c');
    await s.memo.get('b');
    expect(s.runs).toEqual(['a', 'b', 'c', 'a', 'b']);
    expect(s.memo.stats().kept).toBe(2);
  });

  it('ttlMs 0: shares a run in flight, keeps nothing after it', async () => {
    const s = setup({ ttlMs: 0, maxKeys: 10 });
    const [x, y] = await Promise.all([s.memo.get('a'), s.memo.get('a')]);
    expect(x).toBe(y);
    await s.memo.get('a');
    expect(s.runs).toEqual(['a', 'a']);
  });
});
