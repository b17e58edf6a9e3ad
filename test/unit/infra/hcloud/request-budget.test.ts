import { loadConfig } from '../../../../orchestrator/config';
import { cloudLimiter } from '../../../../orchestrator/queues/workers';

/**
 * Hetzner allows 3,600 requests an hour per project. The per-operation costs below are the upper
 * ends of docs/infrastructure.md "Hetzner API requests per operation", read from the source of
 * terraform-provider-hcloud and hcloud-go (constant 5 s polling, a server create of at most 90 s).
 */
const HETZNER_REQUESTS_PER_HOUR = 3_600;
const PROVISION_REQUESTS_MAX = 39; // 3 preflight + ≤ 36 plugin (firewall ≤ 3, server ≤ 27, records 6)
const DEPROVISION_REQUESTS_MAX = 14; // 4 orchestrator + ≤ 10 plugin
const SWEEP_REQUESTS_PER_HOUR = 18; // list: 3 requests every ORPHAN_SWEEP_EVERY_MS (10 min)

describe('the hcloud job limiter keeps a project under Hetzner’s request limit', () => {
  it('spaces jobs evenly: one per 3,600 s / HCLOUD_JOBS_PER_HOUR, per queue', () => {
    expect(cloudLimiter(60)).toEqual({ max: 1, duration: 60_000 });
    expect(cloudLimiter(3_600)).toEqual({ max: 1, duration: 1_000 });
    expect(cloudLimiter(7)).toEqual({ max: 1, duration: 514_286 });
  });

  it('the default leaves room under 3,600 requests an hour with both queues busy', () => {
    const perHour = loadConfig({}).HCLOUD_JOBS_PER_HOUR;
    expect(perHour).toBe(60);
    const jobsPerHour = (3_600_000 / cloudLimiter(perHour).duration) * cloudLimiter(perHour).max;
    const worst =
      jobsPerHour * PROVISION_REQUESTS_MAX + jobsPerHour * DEPROVISION_REQUESTS_MAX + SWEEP_REQUESTS_PER_HOUR;
    expect(worst).toBeLessThanOrEqual(HETZNER_REQUESTS_PER_HOUR * 0.9);
    // The old default (one job a second) allowed sixty times that.
    expect(3_600 * PROVISION_REQUESTS_MAX).toBeGreaterThan(HETZNER_REQUESTS_PER_HOUR);
  });

  it('refuses a rate that is not a whole number of jobs an hour', () => {
    expect(() => loadConfig({ HCLOUD_JOBS_PER_HOUR: '0' })).toThrow(/HCLOUD_JOBS_PER_HOUR/);
    expect(() => loadConfig({ HCLOUD_JOBS_PER_HOUR: '1.5' })).toThrow(/HCLOUD_JOBS_PER_HOUR/);
    expect(loadConfig({ HCLOUD_JOBS_PER_HOUR: '120' }).HCLOUD_JOBS_PER_HOUR).toBe(120);
  });
});
