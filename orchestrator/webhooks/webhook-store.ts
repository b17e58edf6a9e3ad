import type { Rpc } from '../db/rpc';
import { OrchestratorError } from '../errors';
import { Secret } from '../secret';
import type { AuditContext } from '../secrets/secret-input';

/**
 * Webhooks over the SQL contract (migration 20261201110000): endpoints, the delivery outbox, and
 * the one audited read of a signing secret. Nothing here holds a secret except `create`'s answer
 * (shown once) and `readSecret`'s (a Secret wrapper, for the sender only).
 */
export interface WebhookEndpoint {
  readonly id: string;
  readonly orgId: string;
  readonly url: string;
  readonly createdAt: string;
  readonly disabledAt: string | null;
  /** Failures in a row that count for the circuit breaker (reset by a 2xx). */
  readonly consecutiveFailures: number;
  /** While in the future, the endpoint's deliveries are held (its circuit breaker is open). */
  readonly breakerOpenUntil: string | null;
}

export interface WebhookDelivery {
  readonly id: string;
  readonly endpointId: string;
  readonly eventId: string;
  readonly state: 'pending' | 'queued' | 'delivered' | 'failed' | 'cancelled';
  readonly attempts: number;
  readonly lastStatus: number | null;
  readonly lastError: string | null;
  readonly createdAt: string;
  readonly finishedAt: string | null;
}

/**
 * What deployment_events.kind admits: a status change and a step change (written by triggers), and
 * a health event (an agent that may not be serving: a revoke's kept_unhealthy, a rotation's
 * rollback_unverified or switch_unverified, state unhealthy; a rotation's rotation_failed, state
 * unknown; 20261205100000_health_events.sql, 20261205120000_rotation_health_events.sql,
 * 20261206100000_rotation_switch_unverified.sql, 20261207090000_rotation_failed_health.sql).
 * Status and health events are sent to webhooks.
 */
export const EVENT_KINDS = ['status', 'step', 'health'] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

export interface DeploymentEvent {
  readonly id: string;
  readonly deploymentId: string;
  readonly at: string;
  readonly kind: EventKind;
  readonly payload: Readonly<Record<string, unknown>>;
}

export type DeliveryPlan =
  /**
   * Nothing to send: the delivery is final (`state`, e.g. `failed` when it `expired`), or its
   * endpoint's circuit breaker is open (`state` pending, `heldUntil` set): the row went back to
   * pending, holding no slot, and the claim queues it again once the breaker closes (review R21 F3).
   */
  | { action: 'skip'; state: string; heldUntil?: string }
  | {
      action: 'deliver';
      deliveryId: string;
      endpointId: string;
      orgId: string;
      url: string;
      attempt: number;
      event: DeploymentEvent;
    };

type Row = Record<string, unknown>;
const s = (v: unknown): string => String(v);
const sn = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

const endpointOf = (r: Row): WebhookEndpoint => ({
  id: s(r.id),
  orgId: s(r.org_id),
  url: s(r.url),
  createdAt: s(r.created_at),
  disabledAt: sn(r.disabled_at),
  consecutiveFailures: Number(r.consecutive_failures ?? 0),
  breakerOpenUntil: sn(r.breaker_open_until),
});

/** The dispatcher's caps: deliveries queued at once per endpoint and per organisation. */
export interface ClaimCaps {
  readonly perEndpoint: number;
  readonly perOrg: number;
}

/** The circuit breaker's policy (webhook_deliveries__record applies it). */
export interface BreakerPolicy {
  readonly failures: number;
  readonly cooldownMs: number;
  readonly maxCooldownMs: number;
}

export interface RecordResult {
  readonly consecutiveFailures: number;
  readonly breakerOpenUntil: string | null;
  /** This outcome opened the breaker. */
  readonly breakerOpened: boolean;
}

/** An event payload's keys as the API spells them (`reason_code` → `reasonCode`). */
export const camelKeys = (o: Readonly<Record<string, unknown>>): Record<string, unknown> =>
  Object.fromEntries(
    Object.entries(o).map(([k, v]) => [k.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase()), v]),
  );

const kindOf = (v: unknown): EventKind => {
  // a kind this code does not know is a schema newer than the code: said, not relabelled
  if (!EVENT_KINDS.includes(v as EventKind))
    throw new OrchestratorError('internal', `deployment event of unknown kind ${JSON.stringify(v)}`);
  return v as EventKind;
};

export const eventOf = (r: Row): DeploymentEvent => ({
  id: s(r.id),
  deploymentId: s(r.deployment_id),
  at: s(r.at),
  kind: kindOf(r.kind),
  payload: (r.payload ?? {}) as Record<string, unknown>,
});

/**
 * A page of event rows for a live stream: the events of the kinds this code knows, and the id of
 * the last row read whatever its kind, so that a stream's cursor moves past an event of a kind a
 * newer schema added (left out, and named in `unknown`) instead of ending the stream, or every
 * stream of the process (review R12 finding 5). A webhook delivery of such an event still fails
 * (eventOf) and is retried until code that knows the kind sends it.
 */
export const streamEventsOf = (
  rows: readonly Row[],
): { events: DeploymentEvent[]; lastId: string | undefined; unknown: string[] } => {
  const events: DeploymentEvent[] = [];
  const unknown: string[] = [];
  for (const r of rows) {
    if (EVENT_KINDS.includes(r.kind as EventKind)) events.push(eventOf(r));
    else unknown.push(String(r.kind).slice(0, 40));
  }
  const last = rows.at(-1);
  return { events, lastId: last === undefined ? undefined : s(last.id), unknown };
};

const deliveryOf = (r: Row): WebhookDelivery => ({
  id: s(r.id),
  endpointId: s(r.endpoint_id),
  eventId: s(r.event_id),
  state: r.state as WebhookDelivery['state'],
  attempts: Number(r.attempts),
  lastStatus: r.last_status === null || r.last_status === undefined ? null : Number(r.last_status),
  lastError: sn(r.last_error),
  createdAt: s(r.created_at),
  finishedAt: sn(r.finished_at),
});

/** `new URL()` normalises (lower-case host, punycode, default port dropped); SQL checks the rest. */
export const normaliseWebhookUrl = (raw: string): string => {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new OrchestratorError('invalid_input', 'url: must be an absolute https:// URL', { field: 'url' });
  }
  return u.href;
};

export const makeWebhookStore = (deps: { rpc: Rpc }) => {
  const { rpc } = deps;
  return {
    /** The signing secret is in this answer and never again. */
    async createEndpoint(
      input: { orgId: string; url: string; allowLoopback: boolean },
      ctx: AuditContext = {},
    ): Promise<WebhookEndpoint & { secret: Secret }> {
      const r = await rpc<Row>('webhook_endpoints__create', {
        p_org_id: input.orgId,
        p_url: normaliseWebhookUrl(input.url),
        p_allow_loopback: input.allowLoopback,
        p_actor: ctx.actor,
        p_request_ip: ctx.requestIp,
        p_user_agent: ctx.userAgent,
      });
      return { ...endpointOf(r), secret: new Secret(s(r.secret)) };
    },
    async listEndpoints(orgId: string): Promise<WebhookEndpoint[]> {
      return (await rpc<Row[]>('webhook_endpoints__list', { p_org_id: orgId })).map(endpointOf);
    },
    async disableEndpoint(
      orgId: string,
      endpointId: string,
      ctx: AuditContext = {},
    ): Promise<WebhookEndpoint> {
      return endpointOf(
        await rpc<Row>('webhook_endpoints__disable', {
          p_org_id: orgId,
          p_endpoint_id: endpointId,
          p_actor: ctx.actor,
          p_request_ip: ctx.requestIp,
          p_user_agent: ctx.userAgent,
        }),
      );
    },
    async listDeliveries(orgId: string, endpointId?: string, limit = 100): Promise<WebhookDelivery[]> {
      return (
        await rpc<Row[]>('webhook_deliveries__list', {
          p_org_id: orgId,
          p_endpoint_id: endpointId,
          p_limit: limit,
        })
      ).map(deliveryOf);
    },
    /**
     * Pending deliveries → queued, within the caps and while their endpoint's breaker is closed; their
     * ids. Pending ones older than `maxAgeSeconds` end failed/expired instead. [] when another claim
     * holds the claims' lock (it is queueing; the next pass comes soon).
     */
    async claim(
      limit: number,
      requeueAfterSeconds: number,
      caps: ClaimCaps,
      maxAgeSeconds: number,
    ): Promise<string[]> {
      const ids = await rpc<(number | string)[]>('webhook_deliveries__claim', {
        p_limit: limit,
        p_requeue_after_seconds: requeueAfterSeconds,
        p_per_endpoint: caps.perEndpoint,
        p_per_org: caps.perOrg,
        p_max_age_seconds: maxAgeSeconds,
      });
      return ids.map(String);
    },
    /** Queued deliveries with no live job (queue.add failed, or the job failed for good) → pending. */
    async release(deliveryIds: readonly string[]): Promise<string[]> {
      const ids = await rpc<(number | string)[]>('webhook_deliveries__release', { p_ids: deliveryIds });
      return ids.map(String);
    },
    async begin(deliveryId: string, maxAgeSeconds: number): Promise<DeliveryPlan> {
      const r = await rpc<Row>('webhook_deliveries__begin', {
        p_delivery_id: deliveryId,
        p_max_age_seconds: maxAgeSeconds,
      });
      if (r.action !== 'deliver')
        return r.held_until === undefined || r.held_until === null
          ? { action: 'skip', state: s(r.state) }
          : { action: 'skip', state: s(r.state), heldUntil: s(r.held_until) };
      return {
        action: 'deliver',
        deliveryId: s(r.delivery_id),
        endpointId: s(r.endpoint_id),
        orgId: s(r.org_id),
        url: s(r.url),
        attempt: Number(r.attempt),
        event: eventOf(r.event as Row),
      };
    },
    async record(
      deliveryId: string,
      outcome: 'delivered' | 'retry' | 'failed',
      httpStatus: number | undefined,
      error: string | undefined,
      breaker: BreakerPolicy,
    ): Promise<RecordResult> {
      const r = await rpc<Row>('webhook_deliveries__record', {
        p_delivery_id: deliveryId,
        p_outcome: outcome,
        p_http_status: httpStatus,
        p_error: error,
        p_breaker_failures: breaker.failures,
        p_breaker_cooldown_ms: breaker.cooldownMs,
        p_breaker_max_cooldown_ms: breaker.maxCooldownMs,
      });
      return {
        consecutiveFailures: Number(r.consecutive_failures ?? 0),
        breakerOpenUntil: sn(r.breaker_open_until),
        breakerOpened: r.breaker_opened === true,
      };
    },
    /**
     * The audited read: an intent committed in a call of its own, then the read against it (a read
     * whose transaction rolled back would still have left the intent).
     */
    async readSecret(endpointId: string, ctx: { actor: string; jobId?: string }): Promise<Secret> {
      const intent = await rpc<Row>('webhook_endpoints__intend_read', {
        p_endpoint_id: endpointId,
        p_actor: ctx.actor,
        p_job_id: ctx.jobId,
      });
      const r = await rpc<Row>('webhook_endpoints__read_secret', {
        p_endpoint_id: endpointId,
        p_intent_id: intent.intent_id,
        p_actor: ctx.actor,
        p_job_id: ctx.jobId,
      });
      if (r.status !== 'ok' || typeof r.secret !== 'string')
        throw new OrchestratorError(
          'secret_denied',
          `webhook signing secret of endpoint ${endpointId}: ${s(r.status)}`,
        );
      return new Secret(r.secret);
    },
  };
};
export type WebhookStore = ReturnType<typeof makeWebhookStore>;
