import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { Webhook } from 'standardwebhooks';
import type { Secret } from '../secret';
import { addressAllowed, guardedLookup } from './webhook-address';

/**
 * One signed POST (Standard Webhooks: HMAC-SHA256 over `<id>.<timestamp>.<body>` under the
 * endpoint's whsec_ secret; headers webhook-id, webhook-timestamp, webhook-signature). No
 * redirect is followed, the response body is read (at most 64 KiB) and dropped, and the outcome
 * is metadata only: the HTTP status or one of our own error codes. The secret is used here and
 * nowhere else; it is never logged or returned.
 */
export interface SendInput {
  readonly url: string;
  readonly msgId: string;
  readonly timestamp: Date;
  readonly body: string;
  readonly secret: Secret;
  readonly timeoutMs: number;
  /** Local mode: loopback receivers allowed. */
  readonly allowLoopback: boolean;
  /** Name servers for the host's lookup (`ip` or `ip:port`); the system's when absent. */
  readonly dnsServers?: readonly string[];
}

export type SendResult =
  | { ok: true; status: number }
  | {
      ok: false;
      status?: number;
      error:
        | 'http_status'
        | 'timeout'
        | 'address_refused'
        | 'dns_failed'
        | 'tls_failed'
        | 'connection_failed'
        | 'bad_status'
        | 'bad_url';
    };

export const signatureHeaders = (
  secret: Secret,
  msgId: string,
  timestamp: Date,
  body: string,
): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> => ({
  'webhook-id': msgId,
  'webhook-timestamp': String(Math.floor(timestamp.getTime() / 1000)),
  'webhook-signature': new Webhook(secret.reveal()).sign(msgId, timestamp, body),
});

const MAX_RESPONSE_BYTES = 64 * 1024;

const errorOf = (err: NodeJS.ErrnoException): Exclude<SendResult, { ok: true }>['error'] => {
  if (err.code === 'EWEBHOOKADDRESS') return 'address_refused';
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return 'dns_failed';
  if (err.code === 'ETIMEDOUT' || err.name === 'AbortError' || err.code === 'ABORT_ERR') return 'timeout';
  if (
    typeof err.code === 'string' &&
    /^(ERR_TLS|CERT_|UNABLE_TO|DEPTH_ZERO|SELF_SIGNED|ERR_SSL)/.test(err.code)
  )
    return 'tls_failed';
  return 'connection_failed';
};

/** The ports a webhook may use (`URL.port` is '' for the scheme's default, 443). */
const WEBHOOK_PORTS = new Set(['', '443', '8443']);

export const sendWebhook = async (input: SendInput): Promise<SendResult> => {
  let url: URL;
  try {
    url = new URL(input.url);
  } catch {
    return { ok: false, error: 'bad_url' };
  }
  const https = url.protocol === 'https:';
  if (!https && !(url.protocol === 'http:' && input.allowLoopback)) return { ok: false, error: 'bad_url' };
  if (url.username || url.password) return { ok: false, error: 'bad_url' };
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  // an IP literal is connected to as is (no lookup runs): check it here
  if (isIP(host) && !addressAllowed(host, input.allowLoopback))
    return { ok: false, error: 'address_refused' };
  if (!https && !(isIP(host) && addressAllowed(host, true) && !addressAllowed(host, false)))
    return { ok: false, error: 'bad_url' }; // plain http only to a loopback literal
  // HTTPS ports only (the default 443, or 8443), as webhook_endpoints__check_url requires since
  // 20261207120000: a webhook must not make the orchestrator knock on any port of a host, whose
  // error codes (connection_failed, timeout, tls_failed) would tell open from closed. Checked
  // again here for an endpoint registered before that. Local mode (allowLoopback: its receivers
  // listen on loopback, on any port) is exempt here; its registrations still are not, but for a
  // loopback literal.
  if (!input.allowLoopback && !WEBHOOK_PORTS.has(url.port)) return { ok: false, error: 'bad_url' };

  const headers = {
    ...signatureHeaders(input.secret, input.msgId, input.timestamp, input.body),
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(input.body)),
    'user-agent': 'cortex-webhooks/1',
  };
  const signal = AbortSignal.timeout(input.timeoutMs);
  return new Promise<SendResult>((resolve) => {
    const req = (https ? httpsRequest : httpRequest)(
      url,
      {
        method: 'POST',
        headers,
        signal,
        lookup: guardedLookup(input.allowLoopback, {
          signal,
          timeoutMs: input.timeoutMs,
          dnsServers: input.dnsServers,
        }) as never,
        agent: false,
      },
      (res: IncomingMessage) => {
        let seen = 0;
        res.on('data', (chunk: Buffer) => {
          seen += chunk.length;
          if (seen > MAX_RESPONSE_BYTES) res.destroy();
        });
        const done = (): void => {
          const status = res.statusCode ?? 0;
          resolve(
            status >= 200 && status < 300
              ? { ok: true, status }
              : // Node's parser takes any three digits; the record takes 100-599 only, and a status
                // it refused made every try fail unrecorded (review R24 finding 1)
                status < 100 || status > 599
                ? { ok: false, error: 'bad_status' }
                : { ok: false, status, error: 'http_status' },
          );
        };
        res.on('end', done);
        res.on('close', done);
        res.on('error', done);
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) =>
      resolve({ ok: false, error: signal.aborted ? 'timeout' : errorOf(err) }),
    );
    req.end(input.body);
  });
};
