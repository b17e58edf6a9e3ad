import { OrchestratorError } from '../errors';
import type { Secret } from '../secret';
import type { AgentSlot } from '../../templates/agent-slots';
import type { RuntimeName, SwapMode } from '../../templates/runtime-profiles';

/**
 * The swap's contract, shared by its phases and re-exported by agent-swap.ts (its only entry for
 * callers): input, options, result and failure codes, the clean-up error, and the time bounds.
 */

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

export const THROUGH_CADDY_TIMEOUT_MS = 20_000;
/**
 * After a route back, how long the old instance (which never stopped) may take to answer through
 * Caddy: a few tries, not the forward switch's 20 s (it served until a soak ago).
 */
export const ROUTE_BACK_PROBE_MS = 10_000;
/** How long a new instance must stay healthy after the switch (AgentSwapOptions.soakSeconds). */
export const DEFAULT_SOAK_SECONDS = 5;
/** How often a host-side poll asks again (health through Caddy, drain). */
export const POLL_EVERY_MS = 100;
