import { Counter, Gauge } from 'prom-client';
import { processRegistry } from '../metrics/metrics';

/**
 * Rotation's metrics, in the process registry that workers publish (orchestrator/metrics): keys
 * past their max age (set by the `key-age` task) and deployments by rotation outcome. Labels are
 * outcomes only, never an id.
 */
export const rotationMetrics = {
  keysOverMaxAge: new Gauge({
    name: 'cortex_keys_over_max_age',
    help: 'Active keys whose current version is older than their max age (rotation policy), at the last key-age pass',
    registers: [processRegistry],
  }),
  deployments: new Counter({
    name: 'cortex_rotation_deployments_total',
    help: 'Deployments of completed rotations by outcome (switched, rolled_back, failed, skipped)',
    labelNames: ['outcome'] as const,
    registers: [processRegistry],
  }),
};
