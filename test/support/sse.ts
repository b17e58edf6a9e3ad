/**
 * A small server-sent events client for the tests: reads a text/event-stream response frame by
 * frame (id, event, data), as an EventSource would, and can stop at any point (the connection is
 * aborted, as a browser tab closing would).
 */
export interface SseFrame {
  readonly id?: string;
  readonly event: string;
  readonly data: string;
}

export interface SseStream {
  readonly status: number;
  readonly headers: Headers;
  /** The next frame (comments and `retry:` lines skipped), or null when the server ended the stream. */
  next(timeoutMs?: number): Promise<SseFrame | null>;
  /** Every frame until the server ends the stream. */
  rest(timeoutMs?: number): Promise<SseFrame[]>;
  /** Comment lines seen so far (heartbeats). */
  readonly comments: string[];
  abort(): void;
}

export const openSse = async (url: string, headers: Record<string, string>): Promise<SseStream> => {
  const ctl = new AbortController();
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: ctl.signal });
  const reader = res.body?.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let done = false;
  const comments: string[] = [];

  const parse = (block: string): SseFrame | undefined => {
    let id: string | undefined;
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line);
      else if (line.startsWith('id: ')) id = line.slice(4);
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    return data.length ? { ...(id === undefined ? {} : { id }), event, data: data.join('\n') } : undefined;
  };

  const next = async (timeoutMs = 30_000): Promise<SseFrame | null> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const cut = buf.indexOf('\n\n');
      if (cut >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const f = parse(block);
        if (f) return f;
        continue;
      }
      if (done || !reader) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('SSE: no frame within the timeout');
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        reader.read(),
        new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), left);
        }),
      ]).finally(() => clearTimeout(timer));
      if (r === 'timeout') throw new Error('SSE: no frame within the timeout');
      if (r.done) done = true;
      else buf += decoder.decode(r.value, { stream: true });
    }
  };

  return {
    status: res.status,
    headers: res.headers,
    next,
    async rest(timeoutMs = 60_000) {
      const out: SseFrame[] = [];
      for (let f = await next(timeoutMs); f; f = await next(timeoutMs)) out.push(f);
      return out;
    },
    comments,
    abort: () => ctl.abort(),
  };
};
