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
/** Blocks the metadata service for non-root users; the agent unit Requires= it (and starts After= it). */
export const METADATA_BLOCK_UNIT = 'cortex-metadata-block.service';

// systemd splits ExecStart= on whitespace and expands `$`, `%`, quotes and backslashes: words made
// only of these characters mean exactly themselves, so no quoting is needed or attempted.
const PLAIN_WORD = /^[A-Za-z0-9_./:=,+-]+$/;
const UNIT_OPTION = /^[A-Z][A-Za-z]+=[^\n\r]*$/;

export const renderAgentUnit = (runtime: RuntimeProfile, envFile: string = ENV_FILE_PATH): string => {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(runtime.name)) throw new Error('runtime name must be a lower-case word');
  // Messages name the position, never the text: a value in the wrong place may be a key.
  runtime.execStart.forEach((w, i) => {
    if (!PLAIN_WORD.test(w)) throw new Error(`runtime ${runtime.name}: ExecStart word ${i} is not plain`);
  });
  if (!runtime.execStart[0]?.startsWith('/'))
    throw new Error(`runtime ${runtime.name}: ExecStart needs an absolute path`);
  runtime.unitOptions.forEach((o, i) => {
    if (!UNIT_OPTION.test(o))
      throw new Error(`runtime ${runtime.name}: bad unit option ${i} (not Key=value)`);
  });
  if (!PLAIN_WORD.test(envFile) || !envFile.startsWith('/'))
    throw new Error('envFile must be an absolute plain path');
  return fillTemplate(loadTemplate('cortex-agent.service.tmpl'), {
    runtime: runtime.name,
    execStart: runtime.execStart.join(' '),
    envFile,
    runtimeOptions: runtime.unitOptions.join('\n'),
    metadataBlockUnit: METADATA_BLOCK_UNIT,
  });
};
