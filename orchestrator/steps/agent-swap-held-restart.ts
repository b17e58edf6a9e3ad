import { OrchestratorError } from '../errors';
import { agentCommands } from '../remote/agent-commands';
import type { ExecOptions, RemoteShell } from '../remote/ssh-shell';
import { parseHealthyBaseline, swapCommands } from '../remote/swap-commands';
import { agentUnitName, slotEnvFilePath, slotPort } from '../../templates/agent-slots';
import { runtimeProfile } from '../../templates/runtime-profiles';
import {
  NOT_RUN,
  envFileOf,
  runBatch,
  slotUnhealthy,
  soakFailed,
  soakStep,
  throughCaddyFailed,
} from './agent-swap-batch';
import {
  DEFAULT_SOAK_SECONDS,
  ROUTE_BACK_PROBE_MS,
  THROUGH_CADDY_TIMEOUT_MS,
  type AgentSwapInput,
  type AgentSwapOptions,
  type AgentSwapResult,
} from './agent-swap-contract';
import { caddyProbe, settle, type Where } from './agent-swap-settle';

/**
 * The held-restart swap (openclaw, which cannot run twice): the serving slot restarted on its new
 * env file, the previous one kept until proven, restored on failure. Split from agent-swap.ts.
 */

export const heldRestart = async (
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
