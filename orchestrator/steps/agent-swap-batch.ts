import { createHmac } from 'node:crypto';
import { OrchestratorError } from '../errors';
import { agentCommands } from '../remote/agent-commands';
import { RESERVED_ENV_NAMES, RESERVED_PREFIXES, renderEnvFile } from '../remote/env-file';
import type { ExecOptions, ExecResult, RemoteShell } from '../remote/ssh-shell';
import {
  cgroupIsUnit,
  parseBatchOutput,
  parsePortHolders,
  parseUpstreamRoute,
  swapCommands,
  type BatchStep,
} from '../remote/swap-commands';
import type { Secret } from '../secret';
import {
  UPSTREAM_UNIT,
  agentUnitName,
  slotEnvFilePath,
  slotPort,
  type AgentSlot,
} from '../../templates/agent-slots';
import type { AgentSwapInput, SwapFailureCode } from './agent-swap-contract';

/**
 * A swap's round trips to the host (runBatch), the batch steps its phases share (route, discard,
 * soak), and what their answers say (Caddy's config, digests, port owners, probes). Pure except
 * runBatch. Split from agent-swap.ts.
 */

export interface CaddyView {
  /** The agent site Caddy serves and its HTTPS port. */
  readonly siteName: string;
  readonly httpsPort: number;
  /** The port its reverse_proxy dials (127.0.0.1:<port>). */
  readonly upstreamPort: number | undefined;
}

type Json = unknown;
const findDial = (node: Json, depth = 0): string | undefined => {
  if (depth > 20 || node === null || typeof node !== 'object') return undefined;
  if (Array.isArray(node)) {
    for (const n of node) {
      const d = findDial(n, depth + 1);
      if (d) return d;
    }
    return undefined;
  }
  const o = node as Record<string, Json>;
  if (o.handler === 'reverse_proxy' && Array.isArray(o.upstreams)) {
    const dial = (o.upstreams[0] as { dial?: unknown } | undefined)?.dial;
    return typeof dial === 'string' ? dial : undefined;
  }
  for (const v of Object.values(o)) {
    const d = findDial(v, depth + 1);
    if (d) return d;
  }
  return undefined;
};

/** Caddy's live config (from its admin socket): the site, and where its reverse_proxy points. */
export const parseCaddy = (r: ExecResult): CaddyView | undefined => {
  if (r.code !== 0) return undefined;
  try {
    const cfg = JSON.parse(r.stdout.toString('utf8')) as {
      apps?: {
        http?: {
          servers?: Record<string, { listen?: string[]; routes?: { match?: { host?: string[] }[] }[] }>;
        };
      };
    };
    for (const server of Object.values(cfg.apps?.http?.servers ?? {})) {
      const host = server.routes?.[0]?.match?.[0]?.host?.[0];
      if (typeof host !== 'string' || !/^[a-z0-9.-]{1,253}$/.test(host)) continue;
      const listen = /:(\d{1,5})$/.exec(server.listen?.[0] ?? '');
      const dial = /^127\.0\.0\.1:(\d{1,5})$/.exec(findDial(server.routes) ?? '');
      return {
        siteName: host,
        httpsPort: listen?.[1] ? Number(listen[1]) : 443,
        upstreamPort: dial?.[1] ? Number(dial[1]) : undefined,
      };
    }
  } catch {
    // not JSON: treated as no answer
  }
  return undefined;
};

export const NOT_RUN: ExecResult = { code: 255, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
const out = (r: ExecResult): string => r.stdout.toString('utf8').trim();

/**
 * Run steps on the host in ONE round trip (swapCommands.batch); one answer per step, `NOT_RUN` for
 * a step after a required one that was not done. The command's deadline covers every poll in it.
 */
export const runBatch = async (
  shell: RemoteShell,
  steps: readonly BatchStep[],
  o: ExecOptions,
  extra: { readonly stdin?: string | Secret; readonly boundMs?: number } = {},
): Promise<ExecResult[]> => {
  const timeoutMs = 60_000 + (extra.boundMs ?? 0) + steps.reduce((t, s) => t + (s.poll?.forMs ?? 0), 0);
  const r = await shell.exec(swapCommands.batch(steps), {
    ...o,
    timeoutMs,
    ...(extra.stdin !== undefined ? { stdin: extra.stdin } : {}),
  });
  const results = parseBatchOutput(r.stdout.toString('utf8'));
  if (results.length === 0)
    throw new OrchestratorError(
      'remote_command_failed',
      `the swap's host helper exited ${r.code} before its first step`,
    );
  return steps.map((_, i) => results[i] ?? NOT_RUN);
};

/** Did the unit's running process hold exactly `env` (and no other customer variable)? */
export const digestsMatch = (r: ExecResult, nonce: Buffer, env: ReadonlyMap<string, Secret>): boolean => {
  if (r.code !== 0) return false;
  const remote = new Map(
    r.stdout
      .toString('utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );
  for (const [name, value] of env) {
    const want = createHmac('sha256', nonce).update(Buffer.from(value.reveal(), 'utf8')).digest('hex');
    if (remote.get(name) !== want) return false;
  }
  // A variable the new set no longer has (a revoked key) must be gone too.
  for (const name of remote.keys())
    if (!env.has(name) && !RESERVED_ENV_NAMES.has(name) && !RESERVED_PREFIXES.some((p) => name.startsWith(p)))
      return false;
  return true;
};

/**
 * Does every socket listening on the new slot's port belong to a process of `unit` (and is there
 * one)? A 200 on the port proves nothing else: any process may bind a free loopback port, so the
 * serving slot's agent could have bound the idle slot's port first (the new instance then fails with
 * EADDRINUSE and the probe reaches the impostor). Read on the host as root: `ss -p` for the
 * holders, their `/proc/<pid>/cgroup` for the unit (swapCommands.portHolders).
 */
const portOwnedBy = (r: ExecResult, unit: string): boolean => {
  if (r.code !== 0) return false;
  const h = parsePortHolders(r.stdout.toString('utf8'));
  if (!h || h.sockets.length === 0 || h.sockets.some((pids) => pids.length === 0)) return false;
  return [...new Set(h.sockets.flat())].every((pid) => {
    const c = h.cgroups.get(pid);
    return pid >= 2 && c !== undefined && cgroupIsUnit(c, unit);
  });
};

/** Why the HTTPS probe through Caddy (polled on the host) did not answer 200, or undefined. */
export const throughCaddyFailed = (r: ExecResult, timeoutMs: number): string | undefined => {
  const code = out(r);
  if (r.code === 0 && code === '200') return undefined;
  const last = r === NOT_RUN ? 'not run' : /^[1-5]\d\d$/.test(code) ? `HTTP ${code}` : `curl exit ${r.code}`;
  return `not healthy through Caddy within ${Math.round(timeoutMs / 1000)} s (last: ${last})`;
};

const stateWords = (r: ExecResult): string =>
  r.stdout
    .toString('utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^[a-z0-9-]{1,32}$/.test(l))
    .join('/') || 'unknown';

/** The route to `slot`: record written, upstream unit re-applied, the live rule checked (a required step). */
export const routeSteps = (slot: AgentSlot, basePort: number): BatchStep[] => [
  { argv: swapCommands.writeActiveSlot(slot), required: true },
  { argv: agentCommands.restart(UPSTREAM_UNIT) },
  { argv: agentCommands.unitState(UPSTREAM_UNIT) },
  {
    argv: swapCommands.upstreamRoute(),
    match: `tcp dport ${basePort} redirect to :${slotPort(basePort, slot)}\\b`,
    required: true,
  },
];
/** What `routeSteps`' answers say: undefined when traffic goes to `slot`. */
export const routeFailed = (
  r: readonly ExecResult[],
  slot: AgentSlot,
  basePort: number,
): string | undefined => {
  const [record = NOT_RUN, restart = NOT_RUN, state = NOT_RUN, rule = NOT_RUN] = r;
  if (record.code !== 0) return `the active-slot record was not written (exit ${record.code})`;
  if (restart.code !== 0) return `${UPSTREAM_UNIT} did not apply the route (${stateWords(state)})`;
  if (
    rule.code !== 0 ||
    parseUpstreamRoute(rule.stdout.toString('utf8'), basePort) !== slotPort(basePort, slot)
  )
    return `the live route does not lead to slot ${slot}`;
  return undefined;
};

/** The env file a swap writes for `input` (validated; the values only inside the Secret). */
export const envFileOf = (input: AgentSwapInput): Secret =>
  renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));

/** Stop a slot and forget its failures; its env file is removed (no value of an idle slot stays on disk). */
export const discardSteps = (slot: AgentSlot, alsoRemove: readonly string[] = []): BatchStep[] => [
  { argv: swapCommands.disable(agentUnitName(slot)) },
  { argv: swapCommands.stop(agentUnitName(slot)) },
  { argv: agentCommands.resetFailed(agentUnitName(slot)) },
  { argv: swapCommands.removeEnvFiles(slotEnvFilePath(slot), ...alsoRemove) },
];

/**
 * A discard (discardSteps' answers, in order) checked, not assumed (review R16 finding 3): a slot
 * given up on must not keep running, nor keep its env file, with an environment nobody records
 * (after a swap back, the old and maybe leaked key). Throws "not known" (retried): the job's
 * retry looks again and discards again.
 */
export const mustBeDiscarded = (slot: AgentSlot, answers: readonly ExecResult[], why: string): void => {
  const [, stopped = NOT_RUN, , removed = NOT_RUN] = answers;
  const left =
    stopped.code !== 0
      ? `slot ${slot} did not stop (exit ${stopped.code})`
      : removed.code !== 0
        ? `the env file of slot ${slot} was not removed (exit ${removed.code})`
        : undefined;
  if (left) throw new OrchestratorError('remote_command_failed', `${left} after ${why}`);
};

/**
 * The soak of a new instance (swapCommands.soak) as a batch step, and how long it may run: the
 * longer of the soak and the drain, plus three probes' own bounds (3 s each: a failed last probe
 * is asked again until it answers or fails three times in a row). `baseline`: the instance its
 * health wait judged healthy (parseHealthyBaseline), so that a restart between that answer and the
 * soak (during the route switch) fails it; a re-run after a cut has none (that answer went with
 * the cut run) and the helper compares with what the host remembered for the slot
 * (/run/cortex-swap.healthy-<slot>; review R19 finding 4), or, when nothing is, with the soak's own
 * start: a restart before it is not seen then.
 */
export const soakStep = (
  unit: string,
  port: number,
  path: string,
  soakSeconds: number,
  oldPort: number,
  drainSeconds: number,
  baseline?: string,
): { readonly step: BatchStep; readonly boundMs: number } => ({
  step: {
    argv: swapCommands.soak(unit, port, path, soakSeconds * 1000, oldPort, drainSeconds * 1000, baseline),
    required: true,
  },
  boundMs: Math.max(soakSeconds, drainSeconds) * 1000 + 10_000,
});

/** Why the soak found the new instance unhealthy (short words, never the host's output), or undefined. */
export const soakFailed = (unit: string, r: ExecResult): string | undefined => {
  if (r.code === 0) return undefined;
  const [word = '', what = '', n = '', state = ''] = out(r).split(' ');
  const count = /^\d{1,6}$/.test(n) ? n : '?';
  const st = /^[a-z0-9/-]{1,80}$/.test(state) ? state : 'unknown';
  if (word === 'unhealthy' && what === 'probes')
    return `${unit} stopped answering its health check after the switch (${count} failed probes in a row; ${st})`;
  if (word === 'unhealthy' && what === 'restarts') return `${unit} restarted after the switch (${st})`;
  if (word === 'unhealthy' && what === 'state') return `${unit} was ${st} at the end of its soak`;
  return `${unit} could not be watched after the switch (helper exit ${r.code})`;
};

/** Why the new slot is not healthy (its start, its health wait and its port owner's answers). */
export const slotUnhealthy = (
  unit: string,
  port: number,
  timeoutMs: number,
  [started = NOT_RUN, waited = NOT_RUN, holders = NOT_RUN]: readonly ExecResult[],
): { readonly reason: string; readonly code?: SwapFailureCode } | undefined => {
  const [word = '', a = '', b = ''] = out(waited).split(' ');
  const state = word === 'timeout' ? a || 'unknown' : b || 'unknown';
  if (started.code !== 0) return { reason: `${unit} did not start (${state})` };
  if (waited.code === 0 && word === 'healthy')
    return portOwnedBy(holders, unit)
      ? undefined
      : {
          reason: `port ${port} is held by a process outside ${unit}: its answer does not count`,
          code: 'port_held_by_foreign_process',
        };
  if (word === 'crashloop') {
    const restarts = Number(a);
    return {
      reason: `${unit} is not healthy: it keeps exiting (${Number.isInteger(restarts) && restarts >= 0 ? restarts : '?'} restarts; ${state})`,
    };
  }
  if (word === 'timeout')
    return {
      reason: `${unit} was not healthy on port ${port} within ${Math.round(timeoutMs / 1000)} s (${state})`,
    };
  return { reason: `${unit} was not health-checked (helper exit ${waited.code})` };
};
