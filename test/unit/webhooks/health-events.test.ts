import { randomUUID } from 'node:crypto';
import { eventFrame } from '../../../orchestrator/api/routes/events';
import { eventOf } from '../../../orchestrator/webhooks/webhook-store';
import { webhookBody } from '../../../orchestrator/webhooks/webhook-workers';

/**
 * Review R8 #5: a `health` event (deployment_events__record_health, an agent the revoke job kept
 * running unhealthy without the revoked key) reaches the SSE stream and the webhooks as `health`,
 * not relabelled `status` (eventOf used to map every kind but `step` to `status`).
 */
const revocationId = randomUUID();
/** A row as deployment_events__json returns it. */
const row = {
  id: 912,
  deployment_id: 'd-1',
  at: '2026-12-01T00:30:00.123456+00:00',
  kind: 'health',
  payload: {
    state: 'unhealthy',
    operation: 'revoke',
    reason_code: 'kept_unhealthy',
    revocation_id: revocationId,
  },
};

describe('health events on the way out', () => {
  it('keep their kind', () => {
    expect(eventOf(row).kind).toBe('health');
    expect(eventOf({ ...row, kind: 'step' }).kind).toBe('step');
    expect(eventOf({ ...row, kind: 'status' }).kind).toBe('status');
  });

  it('a kind this code does not know is an error, not a status event', () => {
    expect(() => eventOf({ ...row, kind: 'gossip' })).toThrow('unknown kind');
  });

  it('are webhooks of type deployment.health, with the payload in the API spelling', () => {
    expect(JSON.parse(webhookBody(eventOf(row), 'o-1'))).toEqual({
      type: 'deployment.health',
      timestamp: '2026-12-01T00:30:00.123Z',
      data: {
        eventId: 912,
        deploymentId: 'd-1',
        orgId: 'o-1',
        state: 'unhealthy',
        operation: 'revoke',
        reasonCode: 'kept_unhealthy',
        revocationId,
      },
    });
  });

  it('are SSE frames with `event: health`', () => {
    const frame = eventFrame(eventOf(row));
    const lines = frame.split('\n');
    expect(lines.slice(0, 2)).toEqual(['id: 912', 'event: health']);
    expect(JSON.parse(lines[2]?.replace(/^data: /, '') ?? '')).toEqual({
      id: 912,
      deploymentId: 'd-1',
      at: row.at,
      kind: 'health',
      state: 'unhealthy',
      operation: 'revoke',
      reasonCode: 'kept_unhealthy',
      revocationId,
    });
    expect(frame.endsWith('\n\n')).toBe(true);
  });
});
