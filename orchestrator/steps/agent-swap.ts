import { createHmac, randomBytes } from 'node:crypto';
import { OrchestratorError, invalidInput } from '../errors';
import { agentCommands, parseMainPid } from '../remote/agent-commands';
import { RESERVED_ENV_NAMES, RESERVED_PREFIXES, renderEnvFile } from '../remote/env-file';
import { isTempNameFor } from '../remote/remote-file';
import type { ExecOptions, RemoteShell } from '../remote/ssh-shell';
import {
  cgroupIsUnit,
  parseActiveSlot,
  parseListenerPids,
  parseUpstreamRoute,
  swapCommands,
} from '../remote/swap-commands';
import type { Secret } from '../secret';
import {
  ACTIVE_SLOT_PATH,
  AGENT_SLOTS,
  ENV_DIR,
  FIRST_SLOT,
  UPSTREAM_UNIT,
  agentUnitName,
  otherSlot,
  slotEnvFilePath,
  slotOfPort,
  slotPort,
  type AgentSlot,
} from '../../templates/agent-slots';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import {
  AGENT_PORT,
  runtimeProfile,
  type RuntimeName,
  type SwapMode,
} from '../../templates/runtime-profiles';

/**
 * Switch a running agent to a new environment (key rotation, revocation) without a failed request,
 * the way kamal-proxy deploys: the runtime profile says how (`swapMode`).
 *
 * - `blue-green` (echo): the agent runs as `cortex-agent@<slot>.service`, slot `blue` or `green`,
 *   each with its own env file (`/etc/cortex/agent-<slot>.env`) and loopback port. Caddy proxies
 *   to the service port (the runtime's port, which nothing listens on); `cortex-upstream.service`
 *   redirects it (nft, one transaction) to the slot named by the record `/etc/cortex/active-slot`.
 *   The idle slot gets the new env file and is started; once it answers its health path on its own
 *   port (from the host, not through Caddy), the record is rewritten and the route re-applied: new
 *   connections go to the new instance while those already open stay on the old one (conntrack).
 *   The switch is checked over HTTPS through Caddy; the old instance is drained (no TCP connection
 *   left to its port, bounded by `drainSeconds`), stopped (SIGTERM: it finishes what it still
 *   serves) and its env file removed. Caddy's config never changes: Caddy 2.6 (Debian 12, Ubuntu
 *   24.04) gives every config load a fresh certificate cache and may start the new HTTP server
 *   before its TLS app has loaded the certificate, so a handshake in that moment fails (seen in
 *   this repository's test through the admin socket, `caddy reload`: EPROTO; caddytls/tls.go at
 *   v2.6.2; fixed by a process-wide cache in 2.7).
 * - `held-restart` (openclaw, which cannot run twice): the serving slot's env file is rewritten
 *   and the unit restarted in place; Caddy's `lb_try_duration` holds requests meanwhile. The
 *   previous env file is kept as a hard link until the new one is proven healthy through Caddy.
 *
 * Contract: the new environment is health-checked before traffic moves. `healthy: false` means it
 * was not healthy and the host is as before (the old instance serving with the old environment,
 * nothing of the new attempt left running or on disk), so a rollback is only a database change. A
 * thrown error (SSH dropped, aborted) means "not known": run the swap again with the same input.
 *
 * Crash safety: every step is re-entrant. A swap first reads where it is — the slot the live nft
 * route leads to (the truth about traffic), else the record `/etc/cortex/active-slot` — and, if that slot already runs the requested environment (checked by HMAC digests under a
 * one-time nonce, never by reading a value back), only finishes the clean-up a cut run left
 * (record, boot enablement, the other slot stopped, its env file and stale temp files removed).
 * Otherwise it starts over on the idle slot. At every point one healthy slot serves.
 */
export type { SwapMode };

export interface AgentSwapInput {
  readonly deploymentId: string;
  readonly runtime: RuntimeName;
  /** The full env var → value set the agent should run with. */
  readonly env: ReadonlyMap<string, Secret>;
}

/**
 * Why a swap is not healthy, where a caller may act on it: `port_held_by_foreign_process` — the new
 * slot's port is (also) held by a process outside the new slot's unit, so its 200 proves nothing
 * (an agent of the other slot, both run as one dynamic user, can bind it first).
 */
export type SwapFailureCode = 'port_held_by_foreign_process';

export interface AgentSwapResult {
  readonly mode: SwapMode;
  readonly healthy: boolean;
  /** Why it is not healthy: short words, never the host's output. */
  readonly reason?: string;
  readonly code?: SwapFailureCode;
  /** The slot serving traffic when the swap returned. */
  readonly slot?: AgentSlot;
}

export interface AgentSwapOptions {
  readonly signal?: AbortSignal;
  /** How long the old instance may finish the requests in flight (blue-green); default 30. */
  readonly drainSeconds?: number;
  /** How long the new environment has to become healthy; default 60 s. */
  readonly healthTimeoutMs?: number;
  /**
   * Force a mode other than the runtime profile's: `held-restart` works for every runtime (tests,
   * or an operator who wants the old behaviour); `blue-green` only for a runtime that can run twice.
   */
  readonly mode?: SwapMode;
}

export const swapModeOf = (runtime: RuntimeName): SwapMode => runtimeProfile(runtime).swapMode;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A process restarted this often while we wait is crash-looping: not healthy, do not wait longer. */
const CRASH_LOOP_RESTARTS = 3;
const THROUGH_CADDY_TIMEOUT_MS = 20_000;

interface CaddyView {
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

/** Caddy's live config over the admin socket: the site, and where its reverse_proxy points. */
const readCaddy = async (shell: RemoteShell, o: ExecOptions): Promise<CaddyView | undefined> => {
  const r = await shell.exec(agentCommands.caddyAdminProbe(), o);
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

/** Does `unit`'s running process hold exactly `env` (and no other customer variable)? */
const runsWith = async (
  shell: RemoteShell,
  unit: string,
  env: ReadonlyMap<string, Secret>,
  o: ExecOptions,
): Promise<boolean> => {
  if ((await shell.exec(agentCommands.isActive(unit), o)).code !== 0) return false;
  const pid = parseMainPid((await shell.exec(agentCommands.mainPid(unit), o)).stdout.toString('utf8'));
  if (pid < 2) return false;
  const nonce = randomBytes(32);
  const r = await shell.exec(agentCommands.environDigests(pid), {
    ...o,
    stdin: `${nonce.toString('hex')}\n`,
  });
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

const stateOf = async (shell: RemoteShell, unit: string, o: ExecOptions): Promise<string> =>
  (await shell.exec(agentCommands.unitState(unit), o)).stdout
    .toString('utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^[a-z0-9-]{1,32}$/.test(l))
    .join('/') || 'unknown';

/**
 * Does every socket listening on `port` belong to a process of `unit` (and is there one)? A 200 on
 * the port proves nothing else: both slots run as one dynamic user, so the serving slot's agent
 * could have bound the idle slot's port first (the new instance then fails with EADDRINUSE and the
 * probe reaches the impostor). Read from the host as root: `ss -p` for the holders, their
 * `/proc/<pid>/cgroup` for the unit.
 */
const portOwnedBy = async (
  shell: RemoteShell,
  unit: string,
  port: number,
  o: ExecOptions,
): Promise<boolean> => {
  const r = await shell.exec(swapCommands.listenersOn(port), o);
  if (r.code !== 0) return false;
  const sockets = parseListenerPids(r.stdout.toString('utf8'));
  if (sockets.length === 0 || sockets.some((pids) => pids.length === 0)) return false;
  for (const pid of new Set(sockets.flat())) {
    if (pid < 2) return false;
    const c = await shell.exec(swapCommands.processCgroup(pid), o);
    if (c.code !== 0 || !cgroupIsUnit(c.stdout.toString('utf8'), unit)) return false;
  }
  return true;
};

type Unhealthy = { readonly reason: string; readonly code?: SwapFailureCode };

/**
 * Poll an instance's health path on its own port, from the host, until 200 from a process of
 * `unit` (a 200 from anyone else fails at once), a crash loop or the deadline.
 */
const waitHealthyDirect = async (
  shell: RemoteShell,
  unit: string,
  port: number,
  path: string,
  timeoutMs: number,
  o: ExecOptions,
): Promise<Unhealthy | undefined> => {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (o.signal?.aborted) throw new OrchestratorError('aborted', 'the swap was aborted');
    // The deadline is checked before each probe: an answer begun after it does not count.
    const inTime = Date.now() < until;
    const r = await shell.exec(swapCommands.httpProbeLoopback(port, path), o);
    if (inTime && r.code === 0 && r.stdout.toString('utf8').trim() === '200') {
      if (await portOwnedBy(shell, unit, port, o)) return undefined;
      return {
        reason: `port ${port} is held by a process outside ${unit}: its answer does not count`,
        code: 'port_held_by_foreign_process',
      };
    }
    const restarts = Number(
      (await shell.exec(swapCommands.restarts(unit), o)).stdout.toString('utf8').trim(),
    );
    const state = await stateOf(shell, unit, o);
    if (restarts >= CRASH_LOOP_RESTARTS || state.startsWith('failed'))
      return {
        reason: `${unit} is not healthy: it keeps exiting (${Number.isInteger(restarts) ? restarts : '?'} restarts; ${state})`,
      };
    if (Date.now() >= until)
      return {
        reason: `${unit} was not healthy on port ${port} within ${Math.round(timeoutMs / 1000)} s (${state})`,
      };
    await sleep(250);
  }
};

/** Poll the agent's health path through Caddy (HTTPS, certificate verified) from the host. */
const waitHealthyThroughCaddy = async (
  shell: RemoteShell,
  view: CaddyView,
  path: string,
  timeoutMs: number,
  o: ExecOptions,
): Promise<string | undefined> => {
  const localCa = (await shell.exec(agentCommands.stat(caddyLocalRootCaPath()), o)).code === 0;
  const argv = swapCommands.httpsProbeThroughCaddy({
    siteName: view.siteName,
    httpsPort: view.httpsPort,
    path,
    localCa,
  });
  const until = Date.now() + timeoutMs;
  let last = 'no answer';
  for (;;) {
    if (o.signal?.aborted) throw new OrchestratorError('aborted', 'the swap was aborted');
    const r = await shell.exec(argv, o);
    const code = r.stdout.toString('utf8').trim();
    if (r.code === 0 && code === '200') return undefined;
    last = /^[1-5]\d\d$/.test(code) ? `HTTP ${code}` : `curl exit ${r.code}`;
    if (Date.now() >= until)
      return `not healthy through Caddy within ${Math.round(timeoutMs / 1000)} s (last: ${last})`;
    await sleep(250);
  }
};

const writeRecord = (shell: RemoteShell, slot: AgentSlot, o: ExecOptions): Promise<void> =>
  shell.writeFileAtomic(ACTIVE_SLOT_PATH, Buffer.from(`${slot}\n`), { mode: 0o600, dirMode: 0o700, ...o });

/** The slot port the service port is routed to now (the live nft rule), if any. */
const liveRoute = async (
  shell: RemoteShell,
  basePort: number,
  o: ExecOptions,
): Promise<number | undefined> => {
  const r = await shell.exec(swapCommands.upstreamRoute(), o);
  return r.code === 0 ? parseUpstreamRoute(r.stdout.toString('utf8'), basePort) : undefined;
};

/**
 * Move traffic: the record names `slot`, and the upstream unit re-applies the redirect from it
 * (one nft transaction: open connections keep their instance, new ones go to `slot`). Caddy's
 * config is not touched. Checked in the live rule.
 */
const routeTo = async (
  shell: RemoteShell,
  slot: AgentSlot,
  basePort: number,
  o: ExecOptions,
): Promise<string | undefined> => {
  await writeRecord(shell, slot, o);
  const r = await shell.exec(agentCommands.restart(UPSTREAM_UNIT), o);
  if (r.code !== 0)
    return `${UPSTREAM_UNIT} did not apply the route (${await stateOf(shell, UPSTREAM_UNIT, o)})`;
  if ((await liveRoute(shell, basePort, o)) !== slotPort(basePort, slot))
    return `the live route does not lead to slot ${slot}`;
  return undefined;
};

/** Stop a slot and forget its failures; its env file is removed (no value of an idle slot stays on disk). */
const discardSlot = async (shell: RemoteShell, slot: AgentSlot, o: ExecOptions): Promise<void> => {
  const unit = agentUnitName(slot);
  await shell.exec(swapCommands.stop(unit), o);
  await shell.exec(agentCommands.resetFailed(unit), o);
  await shell.exec(agentCommands.removeFile(slotEnvFilePath(slot)), o);
};

/** Wait until no TCP connection is left to the old instance's port, at most `seconds`. */
const drain = async (shell: RemoteShell, port: number, seconds: number, o: ExecOptions): Promise<void> => {
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    const r = await shell.exec(swapCommands.establishedTo(port), o);
    if (r.code === 0 && r.stdout.toString('utf8').trim() === '') return;
    await sleep(200);
  }
};

/**
 * The end state around a serving slot: the record names it, it starts at boot and the other does
 * not, the other is drained and stopped, and no env file but the serving one is left (nor a kept
 * previous one, nor a temp file of a cut write).
 */
const settle = async (
  shell: RemoteShell,
  serving: AgentSlot,
  basePort: number,
  drainSeconds: number,
  o: ExecOptions,
): Promise<void> => {
  const old = otherSlot(serving);
  // The route leads to the serving slot (a flushed ruleset, or a record a cut run left pointing
  // elsewhere, is put right: the record is what the upstream unit applies at boot).
  if ((await liveRoute(shell, basePort, o)) !== slotPort(basePort, serving)) {
    const reason = await routeTo(shell, serving, basePort, o);
    if (reason) throw new OrchestratorError('remote_command_failed', reason);
  } else await writeRecord(shell, serving, o);
  await shell.exec(agentCommands.enable(agentUnitName(serving)), o);
  await shell.exec(swapCommands.disable(agentUnitName(old)), o);
  if ((await shell.exec(agentCommands.isActive(agentUnitName(old)), o)).code === 0)
    await drain(shell, slotPort(basePort, old), drainSeconds, o);
  await discardSlot(shell, old, o);
  const leftovers = (await shell.exec(agentCommands.listDir(ENV_DIR), o)).stdout
    .toString('utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter(
      (f) =>
        AGENT_SLOTS.some((s) => f === `agent-${s}.env.previous` || isTempNameFor(`agent-${s}.env`, f)) ||
        isTempNameFor('active-slot', f),
    );
  for (const f of leftovers) await shell.exec(agentCommands.removeFile(`${ENV_DIR}/${f}`), o);
};

interface Where {
  readonly serving: AgentSlot;
  readonly caddy: CaddyView;
}

const where = async (
  shell: RemoteShell,
  basePort: number,
  o: ExecOptions,
): Promise<Where | { reason: string }> => {
  const caddy = await readCaddy(shell, o);
  if (!caddy) return { reason: "Caddy's admin API did not answer with the agent's site" };
  const record = parseActiveSlot((await shell.exec(swapCommands.activeSlot(), o)).stdout.toString('utf8'));
  // Traffic goes where the live route says; a cut run may have written the record and not
  // applied it yet (the route wins: settle() rewrites the record to agree).
  const port = await liveRoute(shell, basePort, o);
  const live = port === undefined ? undefined : slotOfPort(basePort, port);
  return { serving: live ?? record ?? FIRST_SLOT, caddy };
};

const blueGreen = async (
  shell: RemoteShell,
  input: AgentSwapInput,
  opts: AgentSwapOptions,
  at: Where,
  o: ExecOptions,
): Promise<AgentSwapResult> => {
  const profile = runtimeProfile(input.runtime);
  const base = profile.port;
  const drainSeconds = opts.drainSeconds ?? 30;
  const { serving } = at;
  const done = (slot: AgentSlot): AgentSwapResult => ({ mode: 'blue-green', healthy: true, slot });
  const failed = (reason: string, code?: SwapFailureCode): AgentSwapResult => ({
    mode: 'blue-green',
    healthy: false,
    reason,
    ...(code ? { code } : {}),
    slot: serving,
  });

  // A retry after the switch (or a swap to the environment it already runs): only finish up,
  // and check it end to end like a swap.
  if (await runsWith(shell, agentUnitName(serving), input.env, o)) {
    await settle(shell, serving, base, drainSeconds, o);
    const reason = await waitHealthyThroughCaddy(
      shell,
      at.caddy,
      profile.healthPath,
      THROUGH_CADDY_TIMEOUT_MS,
      o,
    );
    return reason ? failed(reason) : done(serving);
  }

  // 1. The idle slot, from scratch, with the new environment.
  const target = otherSlot(serving);
  const unit = agentUnitName(target);
  const port = slotPort(base, target);
  const content = renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));
  await shell.exec(swapCommands.stop(unit), o);
  await shell.exec(agentCommands.resetFailed(unit), o);
  await shell.writeFileAtomic(slotEnvFilePath(target), content, { mode: 0o600, dirMode: 0o700, ...o });
  const started = await shell.exec(swapCommands.start(unit), o);
  const unhealthy: Unhealthy | undefined =
    started.code !== 0
      ? { reason: `${unit} did not start (${await stateOf(shell, unit, o)})` }
      : await waitHealthyDirect(shell, unit, port, profile.healthPath, opts.healthTimeoutMs ?? 60_000, o);
  if (unhealthy) {
    await discardSlot(shell, target, o);
    return failed(unhealthy.reason, unhealthy.code);
  }

  // 2. Traffic moves (the new slot starts at boot first, so a reboot from here on serves it),
  // then checked end to end: HTTPS through Caddy.
  await shell.exec(agentCommands.enable(unit), o);
  const notSwitched =
    (await routeTo(shell, target, base, o)) ??
    (await waitHealthyThroughCaddy(shell, at.caddy, profile.healthPath, THROUGH_CADDY_TIMEOUT_MS, o));
  if (notSwitched) {
    const back = await routeTo(shell, serving, base, o);
    if (back) throw new OrchestratorError('remote_command_failed', back);
    await shell.exec(swapCommands.disable(unit), o);
    await discardSlot(shell, target, o);
    return failed(notSwitched);
  }

  // 3. The record, boot, the old instance drained and stopped, its env file removed.
  await settle(shell, target, base, drainSeconds, o);
  return done(target);
};

const heldRestart = async (
  shell: RemoteShell,
  input: AgentSwapInput,
  opts: AgentSwapOptions,
  at: Where,
  o: ExecOptions,
): Promise<AgentSwapResult> => {
  const profile = runtimeProfile(input.runtime);
  const slot = at.serving;
  const unit = agentUnitName(slot);
  const file = slotEnvFilePath(slot);
  const previous = `${file}.previous`;
  const drainSeconds = opts.drainSeconds ?? 30;
  if (await runsWith(shell, unit, input.env, o)) {
    await settle(shell, slot, profile.port, drainSeconds, o);
    const reason = await waitHealthyThroughCaddy(
      shell,
      at.caddy,
      profile.healthPath,
      THROUGH_CADDY_TIMEOUT_MS,
      o,
    );
    return reason
      ? { mode: 'held-restart', healthy: false, reason, slot }
      : { mode: 'held-restart', healthy: true, slot };
  }
  const content = renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));
  // The previous file stays (a second name for the same inode, root-only) until the new one is proven.
  const kept = (await shell.exec(swapCommands.linkEnvFile(file, previous), o)).code === 0;
  await shell.writeFileAtomic(file, content, { mode: 0o600, dirMode: 0o700, ...o });
  const restarted = await shell.exec(agentCommands.restart(unit), o);
  const reason =
    restarted.code !== 0
      ? `${unit} did not restart (${await stateOf(shell, unit, o)})`
      : await waitHealthyThroughCaddy(shell, at.caddy, profile.healthPath, opts.healthTimeoutMs ?? 60_000, o);
  if (reason === undefined) {
    await settle(shell, slot, profile.port, drainSeconds, o);
    return { mode: 'held-restart', healthy: true, slot };
  }
  if (kept) {
    await shell.exec(swapCommands.moveEnvFile(previous, file), o);
    await shell.exec(agentCommands.resetFailed(unit), o);
    await shell.exec(agentCommands.restart(unit), o);
  }
  return { mode: 'held-restart', healthy: false, reason, slot };
};

export const swapAgentEnvironment = async (
  shell: RemoteShell,
  input: AgentSwapInput,
  opts: AgentSwapOptions = {},
): Promise<AgentSwapResult> => {
  const o: ExecOptions = opts.signal ? { signal: opts.signal } : {};
  const mode = opts.mode ?? swapModeOf(input.runtime);
  if (mode === 'blue-green' && swapModeOf(input.runtime) !== 'blue-green')
    throw invalidInput('mode', `the ${input.runtime} runtime cannot run twice; it swaps by held restart`);
  // Validated before anything on the host changes (names, values; never echoed).
  renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));
  const at = await where(shell, runtimeProfile(input.runtime).port, o);
  if ('reason' in at) return { mode, healthy: false, reason: at.reason };
  return mode === 'blue-green'
    ? blueGreen(shell, input, opts, at, o)
    : heldRestart(shell, input, opts, at, o);
};

/** The unit of the slot serving traffic (the value check of verify-values.ts uses it). */
export const servingAgentUnit = async (
  shell: RemoteShell,
  basePort: number = AGENT_PORT,
): Promise<string> => {
  const at = await where(shell, basePort, {});
  return agentUnitName('reason' in at ? FIRST_SLOT : at.serving);
};
