import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import { makeLogger } from '../../../orchestrator/log';
import { makeRevocationFeed, REVOCATION_CHANNEL } from '../../../orchestrator/api/token-revocations';

/**
 * The revocation feed's barrier (token-revocations.ts `sync`), which a token cache hit waits for:
 * a caller is released only by the answer to a PING sent AFTER it called — never by a PING already
 * on the wire when it arrived (a revocation published between that PING and the request would then
 * not have been delivered yet). PINGs are shared: one in flight serves every caller that arrived
 * before it was sent; callers arriving meanwhile share the next one.
 */
const fakeSubscriber = () => {
  const pings: { resolve: () => void; reject: (e: Error) => void; sentAfterCalls: number }[] = [];
  const emitter = new EventEmitter();
  let calls = 0;
  const sub = Object.assign(emitter, {
    status: 'ready',
    subscribe: async (channel: string) => {
      expect(channel).toBe(REVOCATION_CHANNEL);
      return 1;
    },
    ping: () =>
      new Promise<string>((resolve, reject) =>
        pings.push({ resolve: () => resolve('PONG'), reject, sentAfterCalls: calls }),
      ),
    disconnect: () => undefined,
  });
  return {
    sub,
    pings,
    /** a request arriving: counts, then calls sync */
    call(feed: { sync(): Promise<boolean> }) {
      calls += 1;
      const at = calls;
      const p = feed.sync();
      const state = { done: false, at, value: undefined as boolean | undefined };
      void p.then((v) => {
        state.done = true;
        state.value = v;
      });
      return state;
    },
  };
};
const tick = () => new Promise((r) => setImmediate(r));
const log = makeLogger({ level: 'silent' });

const setUp = async () => {
  const f = fakeSubscriber();
  const feed = makeRevocationFeed({ subscriber: f.sub as unknown as Redis, log, syncTimeoutMs: 60_000 });
  await tick(); // subscribed
  expect(feed.healthy()).toBe(true);
  return { ...f, feed };
};

describe('revocation feed barrier (sync)', () => {
  it('a request is never released by a PING sent before it arrived', async () => {
    const s = await setUp();
    const first = s.call(s.feed);
    await tick();
    expect(s.pings).toHaveLength(1);
    const second = s.call(s.feed); // arrives while PING 1 is on the wire
    s.pings[0]?.resolve();
    await tick();
    expect(first.done).toBe(true);
    expect(first.value).toBe(true);
    // PING 1 was sent before `second` arrived: it must still wait...
    expect(second.done).toBe(false);
    // ...for a PING sent after it arrived
    expect(s.pings).toHaveLength(2);
    expect(s.pings[1]?.sentAfterCalls).toBeGreaterThanOrEqual(second.at);
    s.pings[1]?.resolve();
    await tick();
    expect(second.done).toBe(true);
    expect(second.value).toBe(true);
    await s.feed.close();
  });

  it('every release follows the answer to a PING sent after the caller arrived (many callers, several rounds)', async () => {
    const s = await setUp();
    const states: ReturnType<typeof s.call>[] = [];
    /** for each caller, the index of the PING whose answer released it */
    const releasedBy = new Map<number, number>();
    for (let round = 0; round < 6; round += 1) {
      for (let i = 0; i < 5; i += 1) states.push(s.call(s.feed));
      await tick();
      const answering = s.pings.findIndex((p) => p !== undefined && !(p as { answered?: boolean }).answered);
      if (answering >= 0) {
        (s.pings[answering] as { answered?: boolean }).answered = true;
        s.pings[answering]?.resolve();
        await tick();
        for (const st of states) if (st.done && !releasedBy.has(st.at)) releasedBy.set(st.at, answering);
      }
    }
    // drain
    for (let guard = 0; guard < 10 && states.some((st) => !st.done); guard += 1) {
      const idx = s.pings.findIndex((p) => !(p as { answered?: boolean }).answered);
      if (idx < 0) break;
      (s.pings[idx] as { answered?: boolean }).answered = true;
      s.pings[idx]?.resolve();
      await tick();
      for (const st of states) if (st.done && !releasedBy.has(st.at)) releasedBy.set(st.at, idx);
    }
    expect(states.every((st) => st.done && st.value === true)).toBe(true);
    for (const st of states) {
      const ping = s.pings[releasedBy.get(st.at) ?? -1];
      // the PING that released it was sent after it arrived
      expect(ping?.sentAfterCalls).toBeGreaterThanOrEqual(st.at);
    }
    // and PINGs were shared: far fewer than callers
    expect(s.pings.length).toBeLessThan(states.length / 2);
    await s.feed.close();
  });

  it('a revocation delivered before the PING answer is applied before the caller is released', async () => {
    const s = await setUp();
    const heard: string[] = [];
    s.feed.onRevoked((e) => heard.push('tokenId' in e ? e.tokenId : 'all'));
    const id = '00000000-0000-4000-8000-0000000000aa';
    const st = s.call(s.feed);
    await tick();
    // Redis answers in order on one connection: the message published before the PING comes first
    s.sub.emit('message', REVOCATION_CHANNEL, id);
    expect(st.done).toBe(false);
    s.pings[0]?.resolve();
    await tick();
    expect(heard).toEqual([id]);
    expect(st.done).toBe(true);
    await s.feed.close();
  });

  it('while the feed is down, sync answers false at once and sends no PING', async () => {
    const s = await setUp();
    s.sub.emit('close');
    const st = s.call(s.feed);
    await tick();
    expect(st).toMatchObject({ done: true, value: false });
    expect(s.pings).toHaveLength(0);
    await s.feed.close();
  });
});
