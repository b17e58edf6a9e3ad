import { ENV_FILE_PATH } from '../orchestrator/remote/env-file';
import { fillTemplate, loadTemplate } from './render';
import type { RuntimeProfile } from './runtime-profiles';

/**
 * The agent's systemd unit: the runtime's command under a dynamic unprivileged user, its
 * variables from the root-only env file, and a hardened sandbox (checked by
 * `systemd-analyze verify` in test/unit/templates).
 */
export const AGENT_UNIT_NAME = 'cortex-agent.service';
export const AGENT_UNIT_PATH = `/etc/systemd/system/${AGENT_UNIT_NAME}`;

// systemd splits ExecStart= on whitespace and expands `$`, `%`, quotes and backslashes: words made
// only of these characters mean exactly themselves, so no quoting is needed or attempted.
const PLAIN_WORD = /^[A-Za-z0-9_./:=,+-]+$/;
const UNIT_OPTION = /^[A-Z][A-Za-z]+=[^\n\r]*$/;

export const renderAgentUnit = (runtime: RuntimeProfile, envFile: string = ENV_FILE_PATH): string => {
  for (const w of runtime.execStart)
    if (!PLAIN_WORD.test(w))
      throw new Error(`runtime ${runtime.name}: ExecStart word is not plain: ${JSON.stringify(w)}`);
  if (!runtime.execStart[0]?.startsWith('/'))
    throw new Error(`runtime ${runtime.name}: ExecStart needs an absolute path`);
  for (const o of runtime.unitOptions)
    if (!UNIT_OPTION.test(o))
      throw new Error(`runtime ${runtime.name}: bad unit option ${JSON.stringify(o)}`);
  if (!PLAIN_WORD.test(envFile) || !envFile.startsWith('/'))
    throw new Error('envFile must be an absolute plain path');
  return fillTemplate(loadTemplate('cortex-agent.service.tmpl'), {
    runtime: runtime.name,
    execStart: runtime.execStart.join(' '),
    envFile,
    runtimeOptions: runtime.unitOptions.join('\n'),
  });
};
