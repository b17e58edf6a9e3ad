import { createHash } from 'node:crypto';
import type { DeploymentStore, Deployment } from '../deployments/deployment-store';
import type { DnsProvider } from '../dns/dns-provider';
import { OrchestratorError, isOrchestratorError } from '../errors';
import type { HostProvider } from '../infra/host-provider';
import { CADDY_STOCK_ADMIN_PORT, agentCommands, parseListeners } from '../remote/agent-commands';
import { ENV_FILE_PATH, renderEnvFile } from '../remote/env-file';
import { generateHostKeyPair } from '../remote/host-keys';
import { rekeyHost } from '../remote/rekey';
import { run, type RemoteShell } from '../remote/ssh-shell';
import type { SecretsService } from '../secrets/secrets-service';
import { caddyLocalRootCaPath, type CaddyTls } from '../../templates/caddyfile';
import { agentServerFiles, buildUserData, renderUserData } from '../../templates/cloud-init';
import { ACTIVE_SLOT_PATH, FIRST_SLOT, UPSTREAM_UNIT } from '../../templates/agent-slots';
import { runtimeProfile } from '../../templates/runtime-profiles';
import { AGENT_UNIT_NAME, METADATA_BLOCK_UNIT } from '../../templates/systemd-unit';
import type { HostAccess } from './host-access';
import { waitHealthy } from './https-health';
import type { StepContext, StepDef } from './step-runner';

/**
 * The eight provisioning steps of DESIGN.md, each check → apply (the runner records). Every step
 * is safe to run again: a retry, or another worker after a crash, never makes a second server, a
 * second DNS record or a half-written file.
 */
export const PROVISION_STEPS = [
  'host',
  'dns',
  'ssh',
  'configure',
  'secrets',
  'start',
  'health',
  'ready',
] as const;
export type ProvisionStep = (typeof PROVISION_STEPS)[number];

export interface ProvisionDeps {
  readonly store: DeploymentStore;
  readonly secrets: SecretsService;
  readonly hosts: HostProvider;
  readonly dns: DnsProvider;
  readonly access: HostAccess;
  /** The orchestrator's own public key, installed for root on every server. */
  readonly orchestratorPublicKey: () => Promise<string>;
  readonly zone: string;
  /** `internal` (local CA) in local mode; `acme` in production. */
  readonly tls: CaddyTls;
  /** Install packages at first boot (hcloud); local images carry them. */
  readonly installPackages: boolean;
  readonly deadlinesMs?: Partial<Record<ProvisionStep, number>>;
}

const DEFAULT_DEADLINES: Record<ProvisionStep, number> = {
  host: 600_000,
  dns: 60_000,
  ssh: 180_000,
  configure: 60_000,
  secrets: 60_000,
  start: 60_000,
  health: 120_000,
  ready: 30_000,
};

/** The agent's unit and env file before blue/green slots (removed by the configure step). */
const LEGACY_AGENT_UNIT = 'cortex-agent.service';
const LEGACY_ENV_FILE = '/etc/cortex/agent.env';

export const siteNameOf = (dep: Pick<Deployment, 'subdomain'>, zone: string): string =>
  `${dep.subdomain}.${zone}`;

const audit = (ctx: StepContext) => ({ actor: 'orchestrator', jobId: ctx.jobId });

/** Run `fn` with a connection to the deployment's host (pinned key from the record), then close it. */
const SHELL = 'shell';

/**
 * Run `fn` with a connection to the deployment's host (pinned key from the record). The steps of
 * one run share one connection (the run's scope closes it); a shared connection that dropped is
 * replaced once, and `fn` runs again (every step is idempotent).
 */
const withShell = async <T>(
  deps: ProvisionDeps,
  ctx: StepContext,
  fn: (shell: RemoteShell) => Promise<T>,
): Promise<T> => {
  const cached = ctx.scope?.get<RemoteShell>(SHELL);
  if (cached) {
    try {
      return await fn(cached);
    } catch (err) {
      if (!(isOrchestratorError(err) && err.code === 'ssh_connect_failed')) throw err;
      await ctx.scope?.drop(SHELL);
    }
  }
  const dep = await deps.store.get(ctx.deployment.id);
  const { shell } = await deps.access.connect(dep, { signal: ctx.signal, waitMs: 60_000 });
  if (ctx.scope) {
    ctx.scope.set(SHELL, shell, (s) => s.close());
    return fn(shell);
  }
  try {
    return await fn(shell);
  } finally {
    await shell.close();
  }
};

/** Keep a verified connection for the next steps of the run (or close it when there is no run scope). */
const keepShell = async (ctx: StepContext, shell: RemoteShell): Promise<void> => {
  if (ctx.scope) ctx.scope.set(SHELL, shell, (s) => s.close());
  else await shell.close();
};

export const provisionSteps = (deps: ProvisionDeps): StepDef[] => {
  const deadline = (s: ProvisionStep): number => deps.deadlinesMs?.[s] ?? DEFAULT_DEADLINES[s];
  const files = (dep: Deployment) =>
    agentServerFiles({
      siteName: siteNameOf(dep, deps.zone),
      tls: deps.tls,
      runtime: runtimeProfile(dep.runtime),
      metadataBlock: 'required',
    });

  const host: StepDef = {
    name: 'host',
    deadlineMs: deadline('host'),
    async apply(ctx) {
      const dep = ctx.deployment;
      // A host may exist without being recorded (a worker died between the two): adopt it; the
      // provider's key is pinned only while the record has none.
      const existing = await deps.hosts.describe(dep.id);
      // Only a host that runs (or boots) is adopted as is; a stopped one goes through ensure(),
      // which starts it again (with its first seed, so with the key the provider recorded).
      if (existing && (existing.state === 'running' || existing.state === 'starting')) {
        await deps.store.recordHost(
          dep.id,
          {
            serverId: existing.serverId,
            ipv4: existing.ipv4,
            ...(existing.ipv6 ? { ipv6: existing.ipv6 } : {}),
            hostPublicKey: existing.hostPublicKey,
          },
          ctx.token,
        );
        return;
      }
      const hostKey = generateHostKeyPair();
      const userData = renderUserData(
        buildUserData({
          hostname: dep.subdomain,
          siteName: siteNameOf(dep, deps.zone),
          hostKey,
          orchestratorPublicKey: await deps.orchestratorPublicKey(),
          tls: deps.tls,
          runtime: runtimeProfile(dep.runtime),
          metadataBlock: 'required',
          installPackages: deps.installPackages,
        }),
      );
      const made = await deps.hosts.ensure(
        {
          deploymentId: dep.id,
          orgId: dep.orgId,
          subdomain: dep.subdomain,
          userData,
          hostPublicKey: hostKey.publicKey,
          ...(dep.region ? { location: dep.region } : {}),
          ...(dep.serverType ? { serverType: dep.serverType } : {}),
        },
        { signal: ctx.signal },
      );
      // The key the host serves: ours from this call, or, for a host ensure() restarted, the one
      // the provider recorded when it was made (its seed is never rewritten). Both were generated here.
      await deps.store.recordHost(
        dep.id,
        {
          serverId: made.serverId,
          ipv4: made.ipv4,
          ...(made.ipv6 ? { ipv6: made.ipv6 } : {}),
          hostPublicKey: made.hostPublicKey,
        },
        ctx.token,
      );
    },
  };

  const dns: StepDef = {
    name: 'dns',
    deadlineMs: deadline('dns'),
    async check(ctx) {
      const dep = await deps.store.get(ctx.deployment.id);
      const name = siteNameOf(dep, deps.zone);
      const now = await deps.dns.lookup(name);
      return dep.dnsName === name && now?.ipv4 === dep.ipv4;
    },
    async apply(ctx) {
      const dep = await deps.store.get(ctx.deployment.id);
      if (!dep.ipv4) throw new OrchestratorError('internal', `deployment ${dep.id} has no address recorded`);
      const name = siteNameOf(dep, deps.zone);
      await deps.dns.ensureRecord({
        name,
        ipv4: dep.ipv4,
        ...(dep.ipv6 ? { ipv6: dep.ipv6 } : {}),
        deploymentId: dep.id,
      });
      await deps.store.recordDns(dep.id, name, ctx.token);
    },
  };

  const ssh: StepDef = {
    name: 'ssh',
    deadlineMs: deadline('ssh'),
    async apply(ctx) {
      const dep = await deps.store.get(ctx.deployment.id);
      const t0 = Date.now();
      const phases: Record<string, number> = {};
      const mark = (name: string): void => void (phases[name] = Date.now() - t0);
      const conn = await deps.access.connect(dep, { signal: ctx.signal, waitMs: deadline('ssh') - 5_000 });
      mark('connectedMs');
      let keep: RemoteShell | undefined = conn.shell;
      try {
        if (conn.key === 'pending') {
          // A re-key was cut after its new key went live: this connection proves it.
          await deps.store.hostKey(dep.id, 'promote', dep.hostPublicKeyPending ?? '', ctx.token);
          return;
        }
        // First boot finished (keys, files, runcmd) before anything else touches the host.
        const status = await conn.shell.exec(agentCommands.cloudInitWait(), { signal: ctx.signal });
        if (status.code !== 0 && status.code !== 2)
          throw new OrchestratorError(
            'remote_command_failed',
            `cloud-init reported an error (exit ${status.code})`,
          );
        mark('bootedMs');
        if (dep.hostRekeyedAt) return;
        // Re-key: the new key is recorded as pending before it is installed (the record always
        // names a key that can answer), proven over a fresh connection, then promoted.
        const newKey = await rekeyHost(conn.shell, {
          signal: ctx.signal,
          onNewKey: async (k) => void (await deps.store.hostKey(dep.id, 'pending', k, ctx.token)),
        });
        keep = undefined;
        await conn.shell.close().catch(() => undefined);
        const proof = await deps.access.connect(
          { ...dep, hostPublicKey: newKey, hostPublicKeyPending: null },
          { signal: ctx.signal, waitMs: 30_000 },
        );
        keep = proof.shell;
        mark('rekeyedMs');
        await deps.store.hostKey(dep.id, 'promote', newKey, ctx.token);
        mark('promotedMs');
        // Where the step's time goes: waiting for the boot (connect, cloud-init) vs our own work.
        ctx.log.info(phases, 'ssh step phases');
      } catch (err) {
        if (keep) await keep.close().catch(() => undefined);
        keep = undefined;
        throw err;
      } finally {
        // The proven connection serves the next steps of this run.
        if (keep) await keepShell(ctx, keep);
      }
    },
  };

  const configure: StepDef = {
    name: 'configure',
    deadlineMs: deadline('configure'),
    // What cloud-init placed at first boot is what we would write: compare digests, owners and
    // modes (one round trip each) and skip the writes when everything is already in place.
    async check(ctx) {
      const want = files(ctx.deployment);
      const paths = want.map((f) => f.path);
      return withShell(deps, ctx, async (shell) => {
        const digests = await shell.exec(agentCommands.fileDigests(paths), { signal: ctx.signal });
        const modes = await shell.exec(agentCommands.statModes(paths), { signal: ctx.signal });
        if (digests.code !== 0 || modes.code !== 0) return false;
        const have = new Map(
          digests.stdout
            .toString('utf8')
            .trim()
            .split('\n')
            .map((l) => [l.slice(66), l.slice(0, 64)] as const),
        );
        const modeOf = new Map(
          modes.stdout
            .toString('utf8')
            .trim()
            .split('\n')
            .map((l) => {
              const [uid, gid, mode, ...rest] = l.split(' ');
              return [rest.join(' '), `${uid} ${gid} ${mode}`] as const;
            }),
        );
        return want.every(
          (f) =>
            have.get(f.path) === createHash('sha256').update(f.content, 'utf8').digest('hex') &&
            modeOf.get(f.path) === `0 0 ${f.permissions.slice(1)}`,
        );
      });
    },
    async apply(ctx) {
      await withShell(deps, ctx, async (shell) => {
        for (const f of files(ctx.deployment)) {
          await shell.writeFileAtomic(f.path, Buffer.from(f.content, 'utf8'), {
            mode: f.permissions === '0755' ? 0o755 : 0o644,
            dirMode: 0o755,
            signal: ctx.signal,
          });
        }
        await run(shell, ['install', '-d', '-m', '0700', '-o', 'root', '-g', 'root', '/etc/cortex'], {
          signal: ctx.signal,
        });
        // A server configured before blue/green ran the agent as a plain unit with one env file:
        // stopped and removed (no-ops elsewhere), so it neither holds the port nor keeps a value.
        await shell.exec(['systemctl', 'disable', '--now', LEGACY_AGENT_UNIT], { signal: ctx.signal });
        await run(shell, agentCommands.removeFile(`/etc/systemd/system/${LEGACY_AGENT_UNIT}`), {
          signal: ctx.signal,
        });
        await run(shell, agentCommands.removeFile(LEGACY_ENV_FILE), { signal: ctx.signal });
        await run(shell, agentCommands.daemonReload(), { signal: ctx.signal });
      });
    },
  };

  const secrets: StepDef = {
    name: 'secrets',
    deadlineMs: deadline('secrets'),
    async apply(ctx) {
      const bound = await deps.secrets.readForDeploymentOrThrow(ctx.deployment.id, audit(ctx));
      const content = renderEnvFile(bound.map((b) => ({ name: b.envVar, value: b.value })));
      await withShell(deps, ctx, async (shell) => {
        // writeFileAtomic verifies root:root 0600 in a root:root 0700 directory after the rename.
        await shell.writeFileAtomic(ENV_FILE_PATH, content, {
          mode: 0o600,
          dirMode: 0o700,
          signal: ctx.signal,
        });
        const st = (await run(shell, agentCommands.stat(ENV_FILE_PATH), { signal: ctx.signal })).stdout
          .toString('utf8')
          .trim();
        if (st !== '0 0 600 regular file')
          // The host's own words are not quoted: it holds the values, and this message becomes the
          // failure reason recorded in Postgres, Redis and the logs.
          throw new OrchestratorError('remote_file_unsafe', `${ENV_FILE_PATH} is not root:root 0600`);
      });
    },
  };

  const start: StepDef = {
    name: 'start',
    deadlineMs: deadline('start'),
    async apply(ctx) {
      await withShell(deps, ctx, async (shell) => {
        const o = { signal: ctx.signal };
        // Restart, not reload: a package-installed Caddy runs its stock config (admin API on TCP
        // 2019); only a restart moves the admin endpoint to the socket the Caddyfile names.
        // systemd's own words for a unit's state: short tokens only, never free text from the host.
        const stateOf = async (unit: string): Promise<string> =>
          (await shell.exec(agentCommands.unitState(unit), o)).stdout
            .toString('utf8')
            .split('\n')
            .map((l) => l.trim())
            .filter((l) => /^[a-z0-9-]{1,32}$/.test(l))
            .join('/') || 'unknown';
        // A unit that fails to start is tried again (its failed state reset, a pause between), and
        // named with its state when it gives up: one failed start on a busy host is not a verdict.
        const restart = async (unit: string): Promise<void> => {
          for (let attempt = 1; ; attempt++) {
            if ((await shell.exec(agentCommands.restartUnits(unit), o)).code === 0) return;
            const state = await stateOf(unit);
            if (attempt >= 3)
              throw new OrchestratorError(
                'remote_command_failed',
                `${unit} did not start after ${attempt} tries (${state})`,
              );
            ctx.log.warn({ unit, attempt, state }, 'unit did not start; trying again');
            await shell.exec(agentCommands.resetFailed(unit), o);
            await new Promise((r) => setTimeout(r, 1_000 * attempt));
          }
        };
        await run(shell, agentCommands.enableUnits('caddy.service', UPSTREAM_UNIT, AGENT_UNIT_NAME), o);
        // A new server serves the first slot: the record names it, and the upstream unit routes
        // Caddy's upstream port to it (an agent swap moves both: orchestrator/steps/agent-swap.ts).
        await shell.writeFileAtomic(ACTIVE_SLOT_PATH, Buffer.from(`${FIRST_SLOT}\n`), {
          mode: 0o600,
          dirMode: 0o700,
          ...o,
        });
        await restart('caddy.service');
        await restart(METADATA_BLOCK_UNIT);
        await restart(UPSTREAM_UNIT);
        // The stock admin API (TCP 2019, unauthenticated) must be gone and the socket answering.
        const stock = parseListeners(
          (await run(shell, agentCommands.tcpListeners(CADDY_STOCK_ADMIN_PORT), o)).stdout.toString('utf8'),
        );
        // Counted, not quoted: the lines are the host's words, and this becomes the recorded reason.
        if (stock.length > 0)
          throw new OrchestratorError(
            'remote_command_failed',
            `Caddy still listens on TCP ${CADDY_STOCK_ADMIN_PORT} (its stock admin API; ${stock.length} socket(s)) after the restart`,
          );
        await run(shell, agentCommands.caddyAdminProbe(), o);
        await restart(AGENT_UNIT_NAME);
        await run(shell, agentCommands.isActive(AGENT_UNIT_NAME), o);
      });
    },
  };

  const health: StepDef = {
    name: 'health',
    deadlineMs: deadline('health'),
    async apply(ctx) {
      const dep = await deps.store.get(ctx.deployment.id);
      if (!dep.ipv4) throw new OrchestratorError('internal', `deployment ${dep.id} has no address recorded`);
      let ca: string | undefined;
      if (deps.tls.mode === 'internal') {
        // The host's local CA root (public): the certificate is verified against it, and only it.
        ca = await withShell(deps, ctx, async (shell) => {
          for (let i = 0; i < 40; i++) {
            const r = await shell.exec(agentCommands.caddyRootCertificate(caddyLocalRootCaPath()), {
              signal: ctx.signal,
            });
            const pem = r.stdout.toString('utf8');
            if (r.code === 0 && pem.includes('BEGIN CERTIFICATE')) return pem;
            await new Promise((res) => setTimeout(res, 250));
          }
          throw new OrchestratorError('timeout', 'the host has no local CA root yet (Caddy not started?)');
        });
      }
      await waitHealthy({
        ip: dep.ipv4,
        servername: siteNameOf(dep, deps.zone),
        path: runtimeProfile(dep.runtime).healthPath,
        ...(ca ? { ca } : {}),
        signal: ctx.signal,
      });
    },
  };

  const ready: StepDef = {
    name: 'ready',
    deadlineMs: deadline('ready'),
    async apply(ctx) {
      await deps.store.setStatus(ctx.deployment.id, 'ready');
    },
  };

  return [host, dns, ssh, configure, secrets, start, health, ready];
};
