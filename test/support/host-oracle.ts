import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { agentCommands, parseMainPid } from '../../orchestrator/remote/agent-commands';
import { run, type RemoteShell } from '../../orchestrator/remote/ssh-shell';
import { servingAgentUnit } from '../../orchestrator/steps/agent-swap';
import { agentProbes, parseEnviron } from './agent-probes';

/**
 * The real-host tests' oracle: what a deployment's host holds, read over SSH as root through the
 * pipeline's own host access (pinned host key). Test-only, like agent-probes.ts: the orchestrator
 * itself never reads an env file or a process environment back.
 */

/** Run `fn` with a shell on the deployment's host, closed afterwards. */
export const withShell = async <T>(
  pl: Pipeline,
  id: string,
  fn: (s: RemoteShell) => Promise<T>,
): Promise<T> => {
  const { shell } = await pl.access.connect(await pl.store.get(id));
  try {
    return await fn(shell);
  } finally {
    await shell.close();
  }
};

/** The serving agent process's environment: variable → value (UTF-8). */
export const agentEnv = (pl: Pipeline, id: string): Promise<Map<string, string>> =>
  withShell(pl, id, async (shell) => {
    const unit = await servingAgentUnit(shell);
    const pid = parseMainPid((await run(shell, agentCommands.mainPid(unit))).stdout.toString());
    const env = parseEnviron((await run(shell, agentProbes.processEnviron(pid))).stdout);
    return new Map([...env].map(([k, v]) => [k, v.toString('utf8')]));
  });

/** One variable as the serving agent process has it, or undefined. */
export const agentValue = async (pl: Pipeline, id: string, name: string): Promise<string | undefined> =>
  (await agentEnv(pl, id)).get(name);

/** How many files under /etc/cortex (the env files of every slot, kept and temp ones) hold `value`. */
export const envFilesHolding = (pl: Pipeline, id: string, value: string): Promise<number> =>
  withShell(pl, id, async (shell) => {
    const files = (await run(shell, ['find', '/etc/cortex', '-type', 'f'])).stdout
      .toString()
      .split('\n')
      .filter(Boolean);
    let n = 0;
    for (const f of files) if ((await run(shell, agentProbes.readFile(f))).stdout.includes(value)) n++;
    return n;
  });
