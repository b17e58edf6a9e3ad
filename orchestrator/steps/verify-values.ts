import { createHmac, randomBytes } from 'node:crypto';
import { OrchestratorError } from '../errors';
import { agentCommands, parseMainPid } from '../remote/agent-commands';
import { run, type RemoteShell } from '../remote/ssh-shell';
import type { BoundSecret } from '../secrets/secrets-service';
import { servingAgentUnit } from './agent-swap';

/**
 * The orchestrator's own check that the agent runs with the values the vault holds, without
 * reading a value back: the host prints HMAC-SHA256 under a fresh random nonce of each variable
 * of the agent's environment, and the orchestrator compares with the same HMAC of the values it
 * read (audited). The nonce makes the digests useless for confirming a guess later.
 */
export type ValueCheck = 'match' | 'mismatch' | 'missing';

export const verifyAgentValues = async (
  shell: RemoteShell,
  bound: readonly BoundSecret[],
): Promise<Map<string, ValueCheck>> => {
  // The blue/green slot serving traffic (orchestrator/steps/agent-swap.ts).
  const unit = await servingAgentUnit(shell);
  const pid = parseMainPid((await run(shell, agentCommands.mainPid(unit))).stdout.toString('utf8'));
  if (pid < 2) throw new OrchestratorError('remote_command_failed', 'the agent is not running');
  const nonce = randomBytes(32);
  const out = (
    await run(shell, agentCommands.environDigests(pid), { stdin: `${nonce.toString('hex')}\n` })
  ).stdout
    .toString('utf8')
    .trim()
    .split('\n');
  const remote = new Map(out.map((l) => l.split(' ') as [string, string]));
  const result = new Map<string, ValueCheck>();
  for (const b of bound) {
    const got = remote.get(b.envVar);
    const want = createHmac('sha256', nonce).update(Buffer.from(b.value.reveal(), 'utf8')).digest('hex');
    result.set(b.envVar, got === undefined ? 'missing' : got === want ? 'match' : 'mismatch');
  }
  return result;
};
