import type { DeploymentStore } from '../deployments/deployment-store';
import type { DnsProvider } from '../dns/dns-provider';
import type { HostProvider } from '../infra/host-provider';
import type { SecretsService } from '../secrets/secrets-service';
import { siteNameOf } from './provision-steps';
import type { StepDef } from './step-runner';

/**
 * Deprovisioning in DESIGN.md's order: the DNS record first (a recycled address never serves a
 * stale name), then the host and everything its provider made, then the deployment's vault secrets
 * and bindings (audited `delete` / `unbind`), then `deleted`. Each step is idempotent, so a retry
 * or another worker resumes it like a provision.
 */
export const DEPROVISION_STEPS = ['dns', 'host', 'secrets', 'deleted'] as const;

export interface DeprovisionDeps {
  readonly store: DeploymentStore;
  readonly secrets: SecretsService;
  readonly hosts: HostProvider;
  readonly dns: DnsProvider;
  readonly zone: string;
  /** Work in flight for the deployment left in Redis (finished jobs, the lease): removed last. */
  readonly forgetJobs?: (deploymentId: string) => Promise<void>;
}

export const deprovisionSteps = (deps: DeprovisionDeps): StepDef[] => [
  {
    name: 'dns',
    deadlineMs: 60_000,
    async apply(ctx) {
      await deps.dns.removeRecord(siteNameOf(ctx.deployment, deps.zone));
    },
  },
  {
    name: 'host',
    deadlineMs: 600_000,
    async apply(ctx) {
      await deps.hosts.destroy(ctx.deployment.id, { signal: ctx.signal });
      await deps.store.hostKey(ctx.deployment.id, 'clear', undefined, ctx.token);
    },
  },
  {
    name: 'secrets',
    deadlineMs: 60_000,
    async apply(ctx) {
      await deps.secrets.deleteForDeployment(ctx.deployment.id, { actor: 'orchestrator', jobId: ctx.jobId });
    },
  },
  {
    name: 'deleted',
    deadlineMs: 30_000,
    async apply(ctx) {
      await deps.forgetJobs?.(ctx.deployment.id);
      await deps.store.setStatus(ctx.deployment.id, 'deleted');
    },
  },
];
