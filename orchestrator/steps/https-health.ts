import { request } from 'node:https';
import { OrchestratorError } from '../errors';

/**
 * The `health` step's probe: an HTTPS GET of the agent's health path through Caddy, to the host's
 * address with the agent's name for SNI and Host, the certificate verified — against the given CA
 * (the host's local CA root in local mode) or the system's trust store (production, ACME).
 */
export interface HealthProbe {
  readonly ip: string;
  readonly servername: string;
  readonly path: string;
  readonly ca?: string;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

export const httpsGet = (o: HealthProbe): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    const req = request(
      {
        host: o.ip,
        port: 443,
        path: o.path,
        servername: o.servername,
        agent: false,
        headers: { host: o.servername, 'user-agent': 'cortex-orchestrator/health' },
        ...(o.ca ? { ca: o.ca } : {}),
        timeout: o.timeoutMs ?? 5_000,
        ...(o.signal ? { signal: o.signal } : {}),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          if (body.length < 65_536) body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });

/** Poll until a 200 or the signal aborts; the last error says why it was not healthy. */
export const waitHealthy = async (
  o: HealthProbe & { intervalMs?: number },
): Promise<{ status: number; body: string; attempts: number }> => {
  let last = 'no attempt finished';
  for (let attempts = 1; ; attempts++) {
    if (o.signal?.aborted) break;
    try {
      const r = await httpsGet(o);
      if (r.status === 200) return { ...r, attempts };
      last = `HTTP ${r.status}`;
    } catch (err) {
      const e = err as { code?: string; message?: string };
      last = e.code ?? e.message ?? 'error';
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 250));
  }
  throw new OrchestratorError('timeout', `https://${o.servername}${o.path} was not healthy (last: ${last})`);
};
