import { OrchestratorError } from '../errors';
import { agentCommands } from '../remote/agent-commands';
import { swapCommands } from '../remote/swap-commands';
import { ENV_FILE_PATH, renderEnvFile } from '../remote/env-file';
import { run, type RemoteShell } from '../remote/ssh-shell';
import type { Secret } from '../secret';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import { runtimeProfile, type RuntimeName } from '../../templates/runtime-profiles';
import { AGENT_UNIT_NAME } from '../../templates/systemd-unit';

/**
 * Switch a running agent to a new environment (key rotation, revocation) without a failed request.
 *
 * - `held-restart`: rewrite the env file atomically, restart the unit; Caddy's `lb_try_duration`
 *   holds requests while the agent is down. Covers an agent that starts in about a second.
 *
 * Contract: the new environment is health-checked before the swap reports success; when it is not
 * healthy, `healthy: false` and the host is put back as it was (the previous env file restored and
 * the agent restarted on it), so a rollback is only a database change for the caller.
 */
export type SwapMode = 'blue-green' | 'held-restart';

export interface AgentSwapInput {
  readonly deploymentId: string;
  readonly runtime: RuntimeName;
  /** The full env var → value set the agent should run with. */
  readonly env: ReadonlyMap<string, Secret>;
}

export interface AgentSwapResult {
  readonly mode: SwapMode;
  readonly healthy: boolean;
  /** Why it is not healthy: short words, never the host's output. */
  readonly reason?: string;
}

export interface AgentSwapOptions {
  readonly signal?: AbortSignal;
  /** How long the old instance may finish requests in flight (blue-green); default 15. */
  readonly drainSeconds?: number;
  /** How long the new environment has to become healthy; default 60 s. */
  readonly healthTimeoutMs?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The site Caddy serves (from its live config, over the admin socket) and its HTTPS port. */
const caddySite = async (
  shell: RemoteShell,
  signal?: AbortSignal,
): Promise<{ siteName: string; httpsPort: number }> => {
  const raw = (await run(shell, agentCommands.caddyAdminProbe(), { ...(signal ? { signal } : {}) })).stdout;
  let siteName: string | undefined;
  let httpsPort = 443;
  try {
    const cfg = JSON.parse(raw.toString('utf8')) as {
      apps?: {
        http?: {
          servers?: Record<string, { listen?: string[]; routes?: { match?: { host?: string[] }[] }[] }>;
        };
      };
    };
    for (const server of Object.values(cfg.apps?.http?.servers ?? {})) {
      const host = server.routes?.[0]?.match?.[0]?.host?.[0];
      if (typeof host === 'string' && /^[a-z0-9.-]{1,253}$/.test(host)) {
        siteName = host;
        const m = /:(\d{1,5})$/.exec(server.listen?.[0] ?? '');
        if (m?.[1]) httpsPort = Number(m[1]);
        break;
      }
    }
  } catch {
    // fall through
  }
  if (!siteName) throw new OrchestratorError('remote_command_failed', 'Caddy serves no agent site');
  return { siteName, httpsPort };
};

/** Poll the agent's health path through Caddy, from the host itself, until 200 or the deadline. */
const healthyThroughCaddy = async (
  shell: RemoteShell,
  runtime: RuntimeName,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<string | undefined> => {
  const site = await caddySite(shell, signal);
  const ca = caddyLocalRootCaPath();
  const hasLocalCa = (await shell.exec(agentCommands.stat(ca), { ...(signal ? { signal } : {}) })).code === 0;
  const argv = swapCommands.httpsProbeThroughCaddy({
    siteName: site.siteName,
    httpsPort: site.httpsPort,
    path: runtimeProfile(runtime).healthPath,
    ...(hasLocalCa ? { caPath: ca } : {}),
  });
  const until = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < until) {
    if (signal?.aborted) throw new OrchestratorError('aborted', 'the swap was aborted');
    const r = await shell.exec(argv, { ...(signal ? { signal } : {}) });
    const code = r.stdout.toString('utf8').trim();
    if (r.code === 0 && code === '200') return undefined;
    last = /^\d{3}$/.test(code) && code !== '000' ? `HTTP ${code}` : `curl exit ${r.code}`;
    await sleep(250);
  }
  return `not healthy through Caddy within ${Math.round(timeoutMs / 1000)} s (last: ${last})`;
};

const heldRestart = async (
  shell: RemoteShell,
  input: AgentSwapInput,
  opts: AgentSwapOptions,
): Promise<AgentSwapResult> => {
  const o = { ...(opts.signal ? { signal: opts.signal } : {}) };
  const content = renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));
  const timeoutMs = opts.healthTimeoutMs ?? 60_000;
  // The previous file is kept (root-only, beside it) until the new one is proven, so a failure
  // puts the host back exactly as it was.
  const backup = `${ENV_FILE_PATH}.previous`;
  await run(shell, swapCommands.copyEnvFile(ENV_FILE_PATH, backup), o);
  await shell.writeFileAtomic(ENV_FILE_PATH, content, { mode: 0o600, dirMode: 0o700, ...o });
  const restarted = await shell.exec(agentCommands.restart(AGENT_UNIT_NAME), o);
  const reason =
    restarted.code !== 0
      ? `${AGENT_UNIT_NAME} did not restart (exit ${restarted.code})`
      : await healthyThroughCaddy(shell, input.runtime, timeoutMs, opts.signal);
  if (reason === undefined) {
    await run(shell, agentCommands.removeFile(backup), o);
    return { mode: 'held-restart', healthy: true };
  }
  await run(shell, swapCommands.moveEnvFile(backup, ENV_FILE_PATH), o);
  await shell.exec(agentCommands.resetFailed(AGENT_UNIT_NAME), o);
  await shell.exec(agentCommands.restart(AGENT_UNIT_NAME), o);
  return { mode: 'held-restart', healthy: false, reason };
};

export const swapAgentEnvironment = async (
  shell: RemoteShell,
  input: AgentSwapInput,
  opts: AgentSwapOptions = {},
): Promise<AgentSwapResult> => {
  return heldRestart(shell, input, opts);
};
