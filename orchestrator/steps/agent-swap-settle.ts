import { randomBytes } from 'node:crypto';
import { OrchestratorError } from '../errors';
import { agentCommands, parseMainPid } from '../remote/agent-commands';
import { isTempNameFor } from '../remote/remote-file';
import type { ExecOptions, ExecResult, RemoteShell } from '../remote/ssh-shell';
import { parseActiveSlot, parseUpstreamRoute, swapCommands, type BatchStep } from '../remote/swap-commands';
import type { Secret } from '../secret';
import {
  AGENT_SLOTS,
  ENV_DIR,
  FIRST_SLOT,
  agentUnitName,
  otherSlot,
  slotEnvFilePath,
  slotOfPort,
  slotPort,
  type AgentSlot,
} from '../../templates/agent-slots';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import {
  NOT_RUN,
  digestsMatch,
  discardSteps,
  parseCaddy,
  routeFailed,
  routeSteps,
  runBatch,
  type CaddyView,
} from './agent-swap-batch';
import { POLL_EVERY_MS, SwapCleanupError } from './agent-swap-contract';

/**
 * Where a swap finds the host (look), the probe through Caddy, and the end state around a serving
 * slot (settle, with rewriteServing for a swap that found its environment already running). Split
 * from agent-swap.ts.
 */

export interface Where {
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
export const look = async (
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

export const caddyProbe = (at: Where, path: string, forMs: number): BatchStep => ({
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
export const settle = async (
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
