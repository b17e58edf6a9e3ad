import { OrchestratorError, invalidInput } from '../errors';
import { agentCommands } from '../remote/agent-commands';
import { renderEnvFile } from '../remote/env-file';
import { isTempNameFor } from '../remote/remote-file';
import type { ExecOptions, ExecResult, LineSession, RemoteShell } from '../remote/ssh-shell';
import { SESSION_END_LINE, batchProgram, sessionRequest, swapCommands } from '../remote/swap-commands';
import { isSecret } from '../secret';
import {
  AGENT_SLOTS,
  ENV_DIR,
  FIRST_SLOT,
  agentUnitName,
  slotEnvFilePath,
} from '../../templates/agent-slots';
import {
  AGENT_PORT,
  runtimeProfile,
  type RuntimeName,
  type SwapMode,
} from '../../templates/runtime-profiles';
import { blueGreen } from './agent-swap-blue-green';
import {
  SwapCleanupError,
  type AgentSwapInput,
  type AgentSwapOptions,
  type AgentSwapResult,
} from './agent-swap-contract';
import { heldRestart } from './agent-swap-held-restart';
import { look } from './agent-swap-settle';

// The contract lives in agent-swap-contract.ts (the phases share it); callers import it from here.
export { DEFAULT_SOAK_SECONDS, SwapCleanupError } from './agent-swap-contract';
export type {
  AgentSwapInput,
  AgentSwapOptions,
  AgentSwapResult,
  SwapFailureCode,
} from './agent-swap-contract';

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

export const swapModeOf = (runtime: RuntimeName): SwapMode => runtimeProfile(runtime).swapMode;

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
