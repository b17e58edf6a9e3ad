import { createHmac, randomBytes } from 'node:crypto';
import { OrchestratorError, invalidInput } from '../errors';
import { agentCommands, parseMainPid } from '../remote/agent-commands';
import { RESERVED_ENV_NAMES, RESERVED_PREFIXES, renderEnvFile } from '../remote/env-file';
import { isTempNameFor } from '../remote/remote-file';
import type { ExecOptions, ExecResult, LineSession, RemoteShell } from '../remote/ssh-shell';
import {
  cgroupIsUnit,
  parseActiveSlot,
  parseBatchOutput,
  parseHealthyBaseline,
  parsePortHolders,
  parseUpstreamRoute,
  SESSION_END_LINE,
  batchProgram,
  sessionRequest,
  swapCommands,
  type BatchStep,
} from '../remote/swap-commands';
import { type Secret, isSecret } from '../secret';
import {
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
 * nothing of the new attempt left running or on disk), so a rollback is only a database change;
 * where the old environment had to be put back (routed back to, or its previous file restored),
 * it is checked through Caddy again, and `code: 'rollback_unverified'` says it did not answer. One
 * exception: `code: 'requested_unverified'` — the requested environment was already serving when
 * the swap began (a re-run after the switch), so the host is as before, on the REQUESTED one. A
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
 * (any process may bind a free loopback port: the other slot's agent can bind it first);
 * `rollback_unverified` — the new instance failed its soak (or its check through Caddy after the
 * switch) and traffic was routed back to the old one (the live rule checked, the new one
 * discarded), or a held restart's previous env file was put back and the unit restarted on it,
 * but the old environment did not answer its health check (through Caddy; held restart: also on
 * its own port) afterwards: the host is on the old environment and may not be serving;
 * `kept_unhealthy` — a held restart with `keepUnhealthy`: the new environment stays although the
 * agent is not healthy on it, and no previous env file is kept; `requested_unverified` — the
 * requested environment was ALREADY serving when the swap began (a re-run after a cut past the
 * switch or restart, or a deployment that already ran it) and still serves, the old one cleaned
 * up, but it did not answer through Caddy: "as before" is then the requested environment, not the
 * old one, and a caller that wants the old one back must swap to it (review R14 finding 4).
 */
export type SwapFailureCode =
  'port_held_by_foreign_process' | 'rollback_unverified' | 'kept_unhealthy' | 'requested_unverified';

export interface AgentSwapResult {
  readonly mode: SwapMode;
  readonly healthy: boolean;
  /** Why it is not healthy: short words, never the host's output. */
  readonly reason?: string;
  readonly code?: SwapFailureCode;
  /** The slot serving traffic when the swap returned. */
  readonly slot?: AgentSlot;
}

/**
 * The new environment serves (health-checked, soaked) but the old slot's clean-up is not verified:
 * its instance did not stop, or its env file (or a kept previous one) is still on disk (review R8
 * #6). Retried like any remote failure (the re-run settles again); a rotation's last attempt records
 * the deployment `switched`, since that is what serves (review R10 F2), and logs this as an error.
 */
export class SwapCleanupError extends OrchestratorError {
  constructor(
    message: string,
    readonly mode?: SwapMode,
    /**
     * The serving slot's OWN env file may not hold the environment its agent runs (a rewrite that
     * failed: review R18 finding 3): its next restart may run another, maybe the old, value.
     */
    readonly servingFileStale = false,
  ) {
    super('remote_command_failed', message);
  }
}

export interface AgentSwapOptions {
  readonly signal?: AbortSignal;
  /** How long the old instance may finish the requests in flight (blue-green); default 30. */
  readonly drainSeconds?: number;
  /** How long the new environment has to become healthy; default 60 s. */
  readonly healthTimeoutMs?: number;
  /**
   * How long the new instance must stay healthy after traffic moved to it, the old one still
   * running (blue-green) or its previous env file still kept (held restart), before the swap is
   * final; default 5. Failing meanwhile puts the old environment back (`healthy: false`).
   */
  readonly soakSeconds?: number;
  /**
   * Force a mode other than the runtime profile's: `held-restart` works for every runtime (tests,
   * or an operator who wants the old behaviour); `blue-green` only for a runtime that can run twice.
   */
  readonly mode?: SwapMode;
  /**
   * Held restart only: keep the new environment even when the agent is not healthy on it (no
   * restore; the kept previous env file is removed), and say so (`kept_unhealthy`). For a revoke,
   * which must take the value off the host even from an agent that cannot run without it.
   */
  readonly keepUnhealthy?: boolean;
}

export const swapModeOf = (runtime: RuntimeName): SwapMode => runtimeProfile(runtime).swapMode;

const THROUGH_CADDY_TIMEOUT_MS = 20_000;
/**
 * After a route back, how long the old instance (which never stopped) may take to answer through
 * Caddy: a few tries, not the forward switch's 20 s (it served until a soak ago).
 */
const ROUTE_BACK_PROBE_MS = 10_000;
/** How long a new instance must stay healthy after the switch (AgentSwapOptions.soakSeconds). */
export const DEFAULT_SOAK_SECONDS = 5;
/** How often a host-side poll asks again (health through Caddy, drain). */
const POLL_EVERY_MS = 100;

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

/** Caddy's live config (from its admin socket): the site, and where its reverse_proxy points. */
const parseCaddy = (r: ExecResult): CaddyView | undefined => {
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

const NOT_RUN: ExecResult = { code: 255, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
const out = (r: ExecResult): string => r.stdout.toString('utf8').trim();

/**
 * Run steps on the host in ONE round trip (swapCommands.batch); one answer per step, `NOT_RUN` for
 * a step after a required one that was not done. The command's deadline covers every poll in it.
 */
const runBatch = async (
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
const digestsMatch = (r: ExecResult, nonce: Buffer, env: ReadonlyMap<string, Secret>): boolean => {
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
const throughCaddyFailed = (r: ExecResult, timeoutMs: number): string | undefined => {
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
const routeSteps = (slot: AgentSlot, basePort: number): BatchStep[] => [
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
const routeFailed = (r: readonly ExecResult[], slot: AgentSlot, basePort: number): string | undefined => {
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
const envFileOf = (input: AgentSwapInput): Secret =>
  renderEnvFile([...input.env].map(([name, value]) => ({ name, value })));

/** Stop a slot and forget its failures; its env file is removed (no value of an idle slot stays on disk). */
const discardSteps = (slot: AgentSlot, alsoRemove: readonly string[] = []): BatchStep[] => [
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
const mustBeDiscarded = (slot: AgentSlot, answers: readonly ExecResult[], why: string): void => {
  const [, stopped = NOT_RUN, , removed = NOT_RUN] = answers;
  const left =
    stopped.code !== 0
      ? `slot ${slot} did not stop (exit ${stopped.code})`
      : removed.code !== 0
        ? `the env file of slot ${slot} was not removed (exit ${removed.code})`
        : undefined;
  if (left) throw new OrchestratorError('remote_command_failed', `${left} after ${why}`);
};

interface Where {
  readonly serving: AgentSlot;
  /** The slot the live nft rule leads to, if any. */
  readonly live: AgentSlot | undefined;
  readonly caddy: CaddyView;
  /** Caddy's local CA root is on the host (the HTTPS probe verifies against it). */
  readonly localCa: boolean;
  /** Does the slot's running process hold the requested environment (nonce HMACs)? */
  readonly runs: (slot: AgentSlot) => boolean;
  /** Does the slot's unit run a process (whatever its environment)? */
  readonly active: (slot: AgentSlot) => boolean;
  /** Is the slot's previous env file (kept by a held restart until proven) on the host? */
  readonly previousKept: (slot: AgentSlot) => boolean;
}

/**
 * Where the host is, in one round trip: Caddy's site, the record, the live route (the truth about
 * traffic; a cut run may have written the record and not applied it yet), and, given `env`, the
 * HMAC digests of both slots' running environments under a fresh nonce (sent on standard input).
 */
const look = async (
  shell: RemoteShell,
  basePort: number,
  o: ExecOptions,
  env?: ReadonlyMap<string, Secret>,
): Promise<Where | { reason: string }> => {
  const nonce = randomBytes(32);
  const r = await runBatch(
    shell,
    [
      { argv: agentCommands.caddyAdminProbe() },
      { argv: swapCommands.activeSlot() },
      { argv: swapCommands.upstreamRoute() },
      { argv: agentCommands.stat(caddyLocalRootCaPath()) },
      ...(env
        ? AGENT_SLOTS.map((s) => ({ argv: swapCommands.unitDigests(agentUnitName(s)), stdin: true }))
        : []),
      ...(env
        ? AGENT_SLOTS.map((s) => ({ argv: agentCommands.stat(`${slotEnvFilePath(s)}.previous`) }))
        : []),
    ],
    o,
    env ? { stdin: `${nonce.toString('hex')}\n` } : {},
  );
  const [caddyAnswer = NOT_RUN, record = NOT_RUN, rule = NOT_RUN, ca = NOT_RUN] = r;
  const slotAnswer = (group: number, slot: AgentSlot): ExecResult =>
    r[4 + group * AGENT_SLOTS.length + AGENT_SLOTS.indexOf(slot)] ?? NOT_RUN;
  const caddy = parseCaddy(caddyAnswer);
  if (!caddy) return { reason: "Caddy's admin API did not answer with the agent's site" };
  const port = rule.code === 0 ? parseUpstreamRoute(rule.stdout.toString('utf8'), basePort) : undefined;
  const live = port === undefined ? undefined : slotOfPort(basePort, port);
  return {
    serving: live ?? parseActiveSlot(record.code === 0 ? record.stdout.toString('utf8') : '') ?? FIRST_SLOT,
    live,
    caddy,
    localCa: ca.code === 0,
    runs: (slot) => env !== undefined && digestsMatch(slotAnswer(0, slot), nonce, env),
    active: (slot) => env !== undefined && slotAnswer(0, slot).code === 0,
    previousKept: (slot) => env !== undefined && slotAnswer(1, slot).code === 0,
  };
};

const caddyProbe = (at: Where, path: string, forMs: number): BatchStep => ({
  argv: swapCommands.httpsProbeThroughCaddy({
    siteName: at.caddy.siteName,
    httpsPort: at.caddy.httpsPort,
    path,
    localCa: at.localCa,
  }),
  match: '^200$',
  poll: { everyMs: POLL_EVERY_MS, forMs },
});

/**
 * For a swap that found the requested environment already running in `serving` (its process's
 * digests): that slot's env file is rewritten from it, since only the process was checked and a
 * run cut mid-restore may have put the old file back under it (review R16 finding 1: a revoke then
 * accepted a host whose file still held the revoked key). Then the process is checked again: one
 * started between the look and the rewrite runs the file as it was then (review R17 finding 2), so
 * digests of anything else than the requested environment throw "not known" (the retry looks
 * again); no process (between two restarts) passes, since whatever starts next reads the new file,
 * and the probe through Caddy that follows judges it (review R18 finding 2: a check by pid
 * refused a crash-looping agent that ran the right file). A rewrite that fails is a clean-up not
 * verified whose serving file may be stale (SwapCleanupError; R17 finding 3, R18 finding 3).
 */
const rewriteServing = async (
  shell: RemoteShell,
  serving: AgentSlot,
  want: { readonly content: Secret; readonly env: ReadonlyMap<string, Secret> },
  o: ExecOptions,
): Promise<void> => {
  const unit = agentUnitName(serving);
  const [written = NOT_RUN] = await runBatch(
    shell,
    [{ argv: swapCommands.writeEnvFile(serving), stdin: true, required: true }],
    o,
    { stdin: want.content },
  );
  if (written.code !== 0)
    throw new SwapCleanupError(
      `the env file of slot ${serving} was not rewritten (exit ${written.code}): it may not hold the environment its agent runs`,
      undefined,
      true,
    );
  let last = NOT_RUN;
  for (let tries = 0; tries < 2; tries++) {
    const nonce = randomBytes(32);
    // the digests (exit 3: not active or no process, by what the helper read), then the main pid
    // as systemd answers it: exit 3 also comes from a service manager that did not answer, so "no
    // process" counts only when systemd itself says MainPID 0 (review R19 finding 1)
    const [now = NOT_RUN, pid = NOT_RUN] = await runBatch(
      shell,
      [{ argv: swapCommands.unitDigests(unit), stdin: true }, { argv: agentCommands.mainPid(unit) }],
      o,
      { stdin: `${nonce.toString('hex')}\n` },
    );
    last = now;
    if (now.code === 0 && digestsMatch(now, nonce, want.env)) return;
    if (now.code === 0)
      throw new OrchestratorError(
        'remote_command_failed',
        `${unit} no longer runs the environment it was found running (restarted before its env file was rewritten?): not known`,
      );
    if (now.code === 3 && pid.code === 0 && parseMainPid(pid.stdout.toString('utf8')) === 0) return;
    // a process started between the two reads (it read the new file), or no answer: once more
  }
  throw new OrchestratorError(
    'remote_command_failed',
    `what ${unit} runs after its env file was rewritten is not known (digests exit ${last.code})`,
  );
};

/**
 * The end state around a serving slot, in one round trip (two when a cut write left a temp file):
 * the route leads to it and the record names it, it starts at boot and the other does not, the
 * other is drained (no TCP connection left to its port, polled, at most `drainSeconds`) and
 * stopped, and no env file but the serving one is left (nor a kept previous one). With `probe`,
 * the end-to-end check through Caddy closes the batch; its answer is returned.
 */
const settle = async (
  shell: RemoteShell,
  at: Where,
  serving: AgentSlot,
  basePort: number,
  drainSeconds: number,
  o: ExecOptions,
  opts: {
    readonly routed: boolean;
    readonly probe?: BatchStep;
    /** A soak (soakStep): it runs first, as a required step, for up to `boundMs`. */
    readonly watch?: { readonly step: BatchStep; readonly boundMs: number };
    /**
     * For a swap that found its environment already running: the serving slot's env file is
     * rewritten first (rewriteServing), since only the running process was checked.
     */
    readonly rewrite?: { readonly content: Secret; readonly env: ReadonlyMap<string, Secret> };
  },
): Promise<{ readonly probe: ExecResult; readonly watch: ExecResult }> => {
  const old = otherSlot(serving);
  if (opts.rewrite) await rewriteServing(shell, serving, opts.rewrite, o);
  // A flushed ruleset, or a record a cut run left pointing elsewhere, is put right (the record is
  // what the upstream unit applies at boot).
  const route: BatchStep[] = opts.routed
    ? []
    : at.live === serving
      ? [{ argv: swapCommands.writeActiveSlot(serving), required: true }]
      : routeSteps(serving, basePort);
  const [disable, ...discard] = discardSteps(
    old,
    AGENT_SLOTS.map((s) => `${slotEnvFilePath(s)}.previous`),
  );
  const watchStep: BatchStep | undefined = opts.watch ? { ...opts.watch.step, required: true } : undefined;
  const rest: BatchStep[] = [
    // The serving instance watched while the old one drains (a required step: when it fails the
    // batch stops here, the old slot still enabled, running and holding its env file).
    ...(watchStep ? [watchStep] : []),
    // (a swap that just routed enabled the serving slot then)
    ...(opts.routed ? [] : [{ argv: swapCommands.enable(agentUnitName(serving)) }]),
    ...(disable ? [disable] : []),
    ...(opts.watch
      ? []
      : [
          {
            argv: swapCommands.establishedTo(slotPort(basePort, old)),
            match: '^\\s*$',
            poll: { everyMs: POLL_EVERY_MS, forMs: drainSeconds * 1000 },
          },
        ]),
    ...discard,
    { argv: agentCommands.listDir(ENV_DIR) },
    ...(opts.probe ? [opts.probe] : []),
  ];
  const r = await runBatch(shell, [...route, ...rest], o, { boundMs: opts.watch?.boundMs ?? 0 });
  const resultOf = (step: BatchStep | undefined): ExecResult =>
    step ? (r[route.length + rest.indexOf(step)] ?? NOT_RUN) : NOT_RUN;
  const watch = resultOf(watchStep);
  if (route.length > 1) {
    const reason = routeFailed(r, serving, basePort);
    if (reason) throw new OrchestratorError('remote_command_failed', reason);
  } else if (route.length === 1 && r[0]?.code !== 0)
    throw new OrchestratorError('remote_command_failed', 'the active-slot record was not written');
  if (opts.watch && watch.code !== 0) return { probe: NOT_RUN, watch };
  // The old slot's clean-up is checked, not assumed (review R8 #6): its instance stopped (it holds
  // the old environment in memory) and no env file of it, nor a kept previous one, left on disk.
  // Otherwise the swap throws SwapCleanupError (the old value may still be on the host): the job's
  // retry settles again; what a last attempt records is the caller's (rotation-job.ts).
  const stopped = r[route.length + rest.indexOf(discard[0] as BatchStep)] ?? NOT_RUN;
  if (stopped.code !== 0)
    throw new SwapCleanupError(
      `slot ${old} did not stop (exit ${stopped.code}): its instance may still hold the old environment`,
    );
  const listing = r[route.length + rest.length - (opts.probe ? 2 : 1)] ?? NOT_RUN;
  const names = (l: ExecResult): string[] =>
    l.stdout
      .toString('utf8')
      .split('\n')
      .map((f) => f.trim());
  // The old slot's env file, a kept previous one, or the temp file of a cut write of either slot's
  // (it may hold a value): none may be left.
  const oldFiles = (l: ExecResult): string[] =>
    names(l).filter(
      (f) =>
        f === `agent-${old}.env` ||
        AGENT_SLOTS.some((s) => f === `agent-${s}.env.previous` || isTempNameFor(`agent-${s}.env`, f)),
    );
  const stale = [...oldFiles(listing), ...names(listing).filter((f) => isTempNameFor('active-slot', f))];
  if (listing.code !== 0 || stale.length > 0) {
    const again = await runBatch(
      shell,
      [
        ...stale.map((f) => ({ argv: agentCommands.removeFile(`${ENV_DIR}/${f}`) })),
        { argv: agentCommands.listDir(ENV_DIR) },
      ],
      o,
    );
    const now = again[again.length - 1] ?? NOT_RUN;
    const still = oldFiles(now);
    if (now.code !== 0 || still.length > 0)
      throw new SwapCleanupError(
        now.code !== 0
          ? `the env file directory could not be listed (exit ${now.code}): the old slot's clean-up is not known`
          : `the old slot's env file could not be removed: ${still.join(', ')}`,
      );
  }
  return { probe: opts.probe ? (r[r.length - 1] ?? NOT_RUN) : NOT_RUN, watch };
};

/**
 * The soak of a new instance (swapCommands.soak) as a batch step, and how long it may run: the
 * longer of the soak and the drain, plus three probes' own bounds (3 s each: a failed last probe
 * is asked again until it answers or fails three times in a row). `baseline`: the instance its
 * health wait judged healthy (parseHealthyBaseline), so that a restart between that answer and the
 * soak (during the route switch) fails it; a re-run after a cut has none (that answer went with
 * the cut run) and the soak's own start is the baseline: a restart before it is not seen then.
 */
const soakStep = (
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
const soakFailed = (unit: string, r: ExecResult): string | undefined => {
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
const slotUnhealthy = (
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

/**
 * Traffic back to `to` (still running its environment) after `from` failed its soak; once that
 * route is checked, `from` is left to finish what it serves (no TCP connection left to its port,
 * at most `drainSeconds`), then discarded (stopped, disabled, its env file removed); then `to` is
 * checked end to end like the forward switch (HTTPS through Caddy, polled on the host for
 * ROUTE_BACK_PROBE_MS). Returns why that check failed, or undefined: a route back whose old
 * instance does not answer is no clean rollback.
 */
const routeBack = async (
  shell: RemoteShell,
  at: Where,
  healthPath: string,
  to: AgentSlot,
  from: AgentSlot,
  basePort: number,
  drainSeconds: number,
  o: ExecOptions,
): Promise<string | undefined> => {
  const back = await runBatch(
    shell,
    [
      ...routeSteps(to, basePort),
      { argv: swapCommands.enable(agentUnitName(to)) },
      {
        argv: swapCommands.establishedTo(slotPort(basePort, from)),
        match: '^\\s*$',
        poll: { everyMs: POLL_EVERY_MS, forMs: drainSeconds * 1000 },
      },
      ...discardSteps(from),
      caddyProbe(at, healthPath, ROUTE_BACK_PROBE_MS),
    ],
    o,
  );
  const reason = routeFailed(back, to, basePort);
  if (reason) throw new OrchestratorError('remote_command_failed', reason);
  const route = routeSteps(to, basePort).length;
  mustBeDiscarded(from, back.slice(route + 2), 'the route back');
  return throughCaddyFailed(back[back.length - 1] ?? NOT_RUN, ROUTE_BACK_PROBE_MS);
};

/**
 * A swap routed back to the old slot (its new slot failed its soak, or was not healthy through
 * Caddy after the switch): not healthy, and `rollback_unverified` when the old slot did not answer
 * through Caddy afterwards (`backFailed`): a route back is only a clean rollback once proven.
 */
const routedBack = (fellOver: string, to: AgentSlot, backFailed: string | undefined): AgentSwapResult =>
  backFailed
    ? {
        mode: 'blue-green',
        healthy: false,
        reason: `${fellOver}; routed back to ${agentUnitName(to)}, which was ${backFailed}`,
        code: 'rollback_unverified',
        slot: to,
      }
    : { mode: 'blue-green', healthy: false, reason: fellOver, slot: to };

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
  const healthMs = opts.healthTimeoutMs ?? 60_000;
  const soakSeconds = opts.soakSeconds ?? DEFAULT_SOAK_SECONDS;
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
  if (at.runs(serving)) {
    // The other slot still running means a run was cut after the switch and before the old
    // instance stopped (during its soak, or right after): the soak is done here, with the old
    // instance still there to go back to.
    const other = otherSlot(serving);
    const way = at.active(other);
    const { probe, watch } = await settle(shell, at, serving, base, drainSeconds, o, {
      routed: false,
      rewrite: { content: envFileOf(input), env: input.env },
      probe: caddyProbe(at, profile.healthPath, THROUGH_CADDY_TIMEOUT_MS),
      ...(way
        ? {
            watch: soakStep(
              agentUnitName(serving),
              slotPort(base, serving),
              profile.healthPath,
              soakSeconds,
              slotPort(base, other),
              drainSeconds,
            ),
          }
        : {}),
    });
    const fellOver = way ? soakFailed(agentUnitName(serving), watch) : undefined;
    if (fellOver)
      return routedBack(
        fellOver,
        other,
        await routeBack(shell, at, profile.healthPath, other, serving, base, drainSeconds, o),
      );
    const reason = throughCaddyFailed(probe, THROUGH_CADDY_TIMEOUT_MS);
    return reason ? failed(reason, 'requested_unverified') : done(serving);
  }

  // 1. The idle slot, from scratch, with the new environment (written on the host from standard
  // input: the value is on no command line), started and polled on its own port from the host;
  // its port must be its own.
  const target = otherSlot(serving);
  const unit = agentUnitName(target);
  const port = slotPort(base, target);
  const content = envFileOf(input);
  const started = await runBatch(
    shell,
    [
      // required: `start` of a unit still active does nothing, so a stale instance that did not
      // stop would answer for the new environment (review R17 finding 4)
      { argv: swapCommands.stop(unit), required: true },
      { argv: agentCommands.resetFailed(unit) },
      { argv: swapCommands.writeEnvFile(target), stdin: true, required: true },
      { argv: swapCommands.start(unit) },
      { argv: swapCommands.waitHealthyLoopback(unit, port, profile.healthPath, healthMs), required: true },
      { argv: swapCommands.portHolders(port) },
    ],
    o,
    { stdin: content, boundMs: healthMs },
  );
  if (started[0]?.code !== 0)
    throw new OrchestratorError(
      'remote_command_failed',
      `slot ${target} did not stop before its start (exit ${started[0]?.code ?? 'none'})`,
    );
  if (started[2]?.code !== 0)
    throw new OrchestratorError('remote_command_failed', `the env file of slot ${target} was not written`);
  const unhealthy = slotUnhealthy(unit, port, healthMs, started.slice(3));
  if (unhealthy) {
    mustBeDiscarded(target, await runBatch(shell, discardSteps(target), o), 'it was not healthy');
    return failed(unhealthy.reason, unhealthy.code);
  }

  // 2. Traffic moves (the new slot starts at boot first, so a reboot from here on serves it),
  // then checked end to end: HTTPS through Caddy, polled on the host.
  const moved = await runBatch(
    shell,
    [
      { argv: swapCommands.enable(unit) },
      ...routeSteps(target, base),
      caddyProbe(at, profile.healthPath, THROUGH_CADDY_TIMEOUT_MS),
    ],
    o,
  );
  if (moved[1]?.code !== 0)
    throw new OrchestratorError('remote_command_failed', 'the active-slot record was not written');
  const notSwitched =
    routeFailed(moved.slice(1), target, base) ??
    throughCaddyFailed(moved[moved.length - 1] ?? NOT_RUN, THROUGH_CADDY_TIMEOUT_MS);
  if (notSwitched) {
    // Back to the old slot; only once that route is checked is the new one discarded; then the old
    // one checked through Caddy, as after a failed soak (routeBack).
    const back = await runBatch(
      shell,
      [
        ...routeSteps(serving, base),
        ...discardSteps(target),
        caddyProbe(at, profile.healthPath, ROUTE_BACK_PROBE_MS),
      ],
      o,
    );
    const reason = routeFailed(back, serving, base);
    if (reason) throw new OrchestratorError('remote_command_failed', reason);
    mustBeDiscarded(target, back.slice(routeSteps(serving, base).length), 'the route back');
    return routedBack(
      notSwitched,
      serving,
      throughCaddyFailed(back[back.length - 1] ?? NOT_RUN, ROUTE_BACK_PROBE_MS),
    );
  }

  // 3. The new instance watched while the old one drains (soak); then the old one disabled,
  // stopped, its env file removed. An instance that fails meanwhile is routed away from, back to
  // the old one, which still runs with the old environment, and discarded.
  const { watch } = await settle(shell, at, target, base, drainSeconds, o, {
    routed: true,
    watch: soakStep(
      unit,
      port,
      profile.healthPath,
      soakSeconds,
      slotPort(base, serving),
      drainSeconds,
      parseHealthyBaseline(started[4] ?? NOT_RUN),
    ),
  });
  const fellOver = soakFailed(unit, watch);
  if (fellOver)
    return routedBack(
      fellOver,
      serving,
      await routeBack(shell, at, profile.healthPath, serving, target, base, drainSeconds, o),
    );
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
  const healthMs = opts.healthTimeoutMs ?? 60_000;
  const soakSeconds = opts.soakSeconds ?? DEFAULT_SOAK_SECONDS;
  const result = (reason: string | undefined): AgentSwapResult =>
    reason
      ? { mode: 'held-restart', healthy: false, reason, slot }
      : { mode: 'held-restart', healthy: true, slot };
  const port = slotPort(profile.port, slot);
  /** keepUnhealthy: the new environment stays; the previous env file (the old values) goes. */
  const keepAnyway = async (reason: string): Promise<AgentSwapResult> => {
    const [gone = NOT_RUN] = await runBatch(shell, [{ argv: swapCommands.removeEnvFiles(previous) }], o);
    if (gone.code !== 0)
      throw new OrchestratorError(
        'remote_command_failed',
        `the previous env file of slot ${slot} was not removed`,
      );
    return { mode: 'held-restart', healthy: false, reason, code: 'kept_unhealthy', slot };
  };
  const giveUp = (reason: string): Promise<AgentSwapResult> =>
    opts.keepUnhealthy ? keepAnyway(reason) : restore(reason);
  /**
   * The previous env file put back and the unit restarted on it, then proven like the new one was
   * (its own port, its port's owner, through Caddy): `reason` is why the new one was not kept; the
   * result says `rollback_unverified` when the old one is not proven either.
   */
  const restore = async (reason: string): Promise<AgentSwapResult> => {
    const [moved = NOT_RUN, , ...checked] = await runBatch(
      shell,
      [
        { argv: swapCommands.moveEnvFile(previous, file) },
        { argv: agentCommands.resetFailed(unit) },
        { argv: agentCommands.restart(unit) },
        { argv: swapCommands.waitHealthyLoopback(unit, port, profile.healthPath, healthMs), required: true },
        { argv: swapCommands.portHolders(port) },
        caddyProbe(at, profile.healthPath, ROUTE_BACK_PROBE_MS),
      ],
      o,
      { boundMs: healthMs },
    );
    const viaCaddy = throughCaddyFailed(checked[3] ?? NOT_RUN, ROUTE_BACK_PROBE_MS);
    const backFailed =
      moved.code !== 0
        ? `the previous env file was not put back (exit ${moved.code})`
        : (slotUnhealthy(unit, port, healthMs, checked)?.reason ?? (viaCaddy && `${unit} was ${viaCaddy}`));
    return backFailed
      ? {
          mode: 'held-restart',
          healthy: false,
          reason: `${reason}; after its previous env file was put back, ${backFailed}`,
          code: 'rollback_unverified',
          slot,
        }
      : result(reason);
  };
  if (at.runs(slot)) {
    // The previous file still kept means a run was cut before the restarted instance was proven
    // (during its soak, or right after): the soak is done here, with that file to go back to.
    const way = at.previousKept(slot);
    const { probe, watch } = await settle(shell, at, slot, profile.port, drainSeconds, o, {
      routed: false,
      rewrite: { content: envFileOf(input), env: input.env },
      probe: caddyProbe(at, profile.healthPath, THROUGH_CADDY_TIMEOUT_MS),
      ...(way ? { watch: soakStep(unit, port, profile.healthPath, soakSeconds, 0, 0) } : {}),
    });
    const fellOver = way ? soakFailed(unit, watch) : undefined;
    if (fellOver) return giveUp(fellOver);
    const reason = throughCaddyFailed(probe, THROUGH_CADDY_TIMEOUT_MS);
    return reason
      ? { mode: 'held-restart', healthy: false, reason, code: 'requested_unverified', slot }
      : result(undefined);
  }
  const content = envFileOf(input);
  // The previous file stays (a second name for the same inode, root-only) until the new one is
  // proven; the new one is written on the host from standard input (on no command line).
  // While it restarts no instance serves and Caddy holds requests for lb_try_duration only: a unit
  // that does not (re)start, or crash-loops on its own port (from the host), ends the wait at once
  // (required steps), so the old environment is back within the hold; then end to end via Caddy.
  // (rotation-gaps.test.ts: 12 failed requests in a 60 s probe before; 0 now.)
  const [link = NOT_RUN, written = NOT_RUN, ...checked] = await runBatch(
    shell,
    [
      { argv: swapCommands.linkEnvFile(file, previous) },
      { argv: swapCommands.writeEnvFile(slot), stdin: true, required: true },
      { argv: agentCommands.restart(unit), required: true },
      { argv: swapCommands.waitHealthyLoopback(unit, port, profile.healthPath, healthMs), required: true },
      { argv: swapCommands.portHolders(port) },
      caddyProbe(at, profile.healthPath, healthMs),
    ],
    o,
    { stdin: content, boundMs: healthMs },
  );
  if (written.code !== 0)
    throw new OrchestratorError('remote_command_failed', `the env file of slot ${slot} was not written`);
  const kept = link.code === 0;
  let reason =
    slotUnhealthy(unit, port, healthMs, checked)?.reason ??
    throughCaddyFailed(checked[3] ?? NOT_RUN, healthMs);
  if (reason === undefined) {
    // Soak: the restarted instance must stay healthy a while before the kept file goes.
    const { watch } = await settle(shell, at, slot, profile.port, drainSeconds, o, {
      routed: false,
      watch: soakStep(
        unit,
        port,
        profile.healthPath,
        soakSeconds,
        0,
        0,
        parseHealthyBaseline(checked[1] ?? NOT_RUN),
      ),
    });
    reason = soakFailed(unit, watch);
    if (reason === undefined) return result(undefined);
  }
  return kept ? giveUp(reason) : result(reason);
};

/**
 * The shell a swap works through: each batch goes to ONE helper kept running for the whole swap
 * (swapCommands.session; a python3 start per phase was most of a swap's CPU on the host), when the
 * shell can hold a conversation (`openLines`); otherwise, or once that helper is gone, each batch is
 * its own command as before. Anything else goes to the shell unchanged. The helper holds the host's
 * swap lock until `end`.
 */
export const swapSession = async (
  shell: RemoteShell,
  o: ExecOptions,
): Promise<{ readonly shell: RemoteShell; end(): void }> => {
  if (!shell.openLines) return { shell, end: () => undefined };
  let session: LineSession | undefined = await shell.openLines(swapCommands.session(), o);
  const viaSession = async (
    s: LineSession,
    argv: readonly string[],
    program: string,
    eo: ExecOptions,
  ): Promise<ExecResult> => {
    const stdin =
      eo.stdin === undefined
        ? undefined
        : isSecret(eo.stdin)
          ? Buffer.from(eo.stdin.reveal(), 'utf8')
          : Buffer.from(eo.stdin);
    const request = sessionRequest(program, stdin);
    try {
      const { lines, ended, exit } = await s.ask(request, (l) => l === SESSION_END_LINE, {
        ...(eo.timeoutMs !== undefined ? { timeoutMs: eo.timeoutMs } : {}),
        ...(eo.signal ? { signal: eo.signal } : {}),
      });
      if (ended) session = undefined;
      const answers = lines.filter((l) => l !== SESSION_END_LINE);
      // The helper was gone before this request (its idle limit, killed): nothing of the batch ran,
      // so it runs as its own command, as without a session.
      if (ended && answers.length === 0) return await shell.exec(argv, eo);
      return {
        code: ended ? (exit?.code ?? 255) : 0,
        stdout: Buffer.from(answers.map((l) => `${l}\n`).join(''), 'utf8'),
        stderr: Buffer.from(exit?.stderrTail ?? '', 'utf8'),
      };
    } catch (err) {
      session = undefined;
      s.close();
      throw err;
    } finally {
      if (isSecret(eo.stdin)) {
        request.fill(0);
        stdin?.fill(0);
      }
    }
  };
  const wrapped: RemoteShell = {
    exec: (argv, eo = {}) => {
      const program = batchProgram(argv);
      return program !== undefined && session ? viaSession(session, argv, program, eo) : shell.exec(argv, eo);
    },
    writeFileAtomic: (path, content, wo) => shell.writeFileAtomic(path, content, wo),
    close: () => shell.close(),
  };
  return { shell: wrapped, end: () => session?.close() };
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
  const bounded = (field: string, v: number | undefined, max: number): void => {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0 && v <= max))
      throw invalidInput(field, `must be a whole number of seconds, 0-${max}`);
  };
  bounded('drainSeconds', opts.drainSeconds, 3_600);
  bounded('soakSeconds', opts.soakSeconds, 600);
  if (opts.keepUnhealthy && mode !== 'held-restart')
    throw invalidInput(
      'keepUnhealthy',
      'needs mode held-restart (blue/green never keeps an unhealthy instance)',
    );
  const session = await swapSession(shell, o);
  try {
    const sh = session.shell;
    const at = await look(sh, runtimeProfile(input.runtime).port, o, input.env);
    if ('reason' in at) return { mode, healthy: false, reason: at.reason };
    return await (mode === 'blue-green'
      ? blueGreen(sh, input, opts, at, o)
      : heldRestart(sh, input, opts, at, o));
  } catch (err) {
    throw err instanceof SwapCleanupError
      ? new SwapCleanupError(err.message, mode, err.servingFileStale)
      : err;
  } finally {
    session.end();
  }
};

/**
 * Take every agent environment off a host whose deployment failed past its `secrets` step (a
 * rotation moving it off the old version, issue 11): both slots stopped and their failed state
 * reset, every slot env file, kept previous file and temp file of a cut write removed, then checked
 * by listing /etc/cortex. The units stay enabled: the provision's `start` step, which its retry runs
 * again, starts the slot on the file its `secrets` step writes. Throws when anything is left.
 */
export const scrubAgentEnvironment = async (shell: RemoteShell, o: ExecOptions = {}): Promise<void> => {
  const must = async (argv: readonly string[], what: string): Promise<ExecResult> => {
    const r = await shell.exec(argv, o);
    if (r.code !== 0) throw new OrchestratorError('remote_command_failed', `${what} (exit ${r.code})`);
    return r;
  };
  for (const slot of AGENT_SLOTS) {
    await must(swapCommands.stop(agentUnitName(slot)), `${agentUnitName(slot)} did not stop`);
    await shell.exec(agentCommands.resetFailed(agentUnitName(slot)), o);
  }
  await must(
    swapCommands.removeEnvFiles(
      ...AGENT_SLOTS.flatMap((s) => [slotEnvFilePath(s), `${slotEnvFilePath(s)}.previous`]),
    ),
    'the env files were not removed',
  );
  const isEnvFile = (f: string): boolean =>
    AGENT_SLOTS.some(
      (s) => f === `agent-${s}.env` || f === `agent-${s}.env.previous` || isTempNameFor(`agent-${s}.env`, f),
    );
  const envFilesLeft = async (): Promise<string[]> =>
    (await must(agentCommands.listDir(ENV_DIR), `${ENV_DIR} could not be listed`)).stdout
      .toString('utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter(isEnvFile);
  for (const f of await envFilesLeft())
    await must(agentCommands.removeFile(`${ENV_DIR}/${f}`), 'a temp file was not removed');
  const still = await envFilesLeft();
  if (still.length > 0)
    throw new OrchestratorError(
      'remote_command_failed',
      `${still.length} agent env file(s) left in ${ENV_DIR}`,
    );
};

/** The unit of the slot serving traffic (the value check of verify-values.ts uses it). */
export const servingAgentUnit = async (
  shell: RemoteShell,
  basePort: number = AGENT_PORT,
): Promise<string> => {
  const at = await look(shell, basePort, {});
  return agentUnitName('reason' in at ? FIRST_SLOT : at.serving);
};
