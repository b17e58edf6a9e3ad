import { OrchestratorError } from '../errors';
import { agentCommands } from '../remote/agent-commands';
import type { ExecOptions, RemoteShell } from '../remote/ssh-shell';
import { parseHealthyBaseline, swapCommands } from '../remote/swap-commands';
import { agentUnitName, otherSlot, slotPort, type AgentSlot } from '../../templates/agent-slots';
import { runtimeProfile } from '../../templates/runtime-profiles';
import {
  NOT_RUN,
  discardSteps,
  envFileOf,
  mustBeDiscarded,
  routeFailed,
  routeSteps,
  runBatch,
  slotUnhealthy,
  soakFailed,
  soakStep,
  throughCaddyFailed,
} from './agent-swap-batch';
import {
  DEFAULT_SOAK_SECONDS,
  POLL_EVERY_MS,
  ROUTE_BACK_PROBE_MS,
  THROUGH_CADDY_TIMEOUT_MS,
  type AgentSwapInput,
  type AgentSwapOptions,
  type AgentSwapResult,
  type SwapFailureCode,
} from './agent-swap-contract';
import { caddyProbe, settle, type Where } from './agent-swap-settle';

/**
 * The blue/green swap (echo): the idle slot started and proven, traffic moved and soaked, and the
 * route back when the new slot falls over. Split from agent-swap.ts.
 */

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

export const blueGreen = async (
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
