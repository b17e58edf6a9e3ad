import { ENV_FILE_PATH } from '../orchestrator/remote/env-file';
import {
  AGENT_TEMPLATE_UNIT,
  AGENT_USER,
  AGENT_TEMPLATE_UNIT_PATH,
  ENV_DIR,
  FIRST_SLOT,
  SLOT_PORT_VARIABLE,
  agentUnitName,
} from './agent-slots';
import { fillTemplate, loadTemplate } from './render';
import type { RuntimeProfile } from './runtime-profiles';

/**
 * The agent's systemd unit: the runtime's command under a dynamic unprivileged user, its
 * variables from the root-only env file, and a hardened sandbox (checked by
 * `systemd-analyze verify` in test/unit/templates).
 *
 * Servers run it as a template unit, `cortex-agent@.service`, one instance per blue/green slot
 * (templates/agent-slots.ts): `cortex-agent@blue.service` reads `/etc/cortex/agent-blue.env` and
 * listens on the port its slot settings file names. `renderAgentUnit` renders the same sandbox as
 * a plain unit with one env file (tests run probes under it).
 */
export { AGENT_TEMPLATE_UNIT, AGENT_TEMPLATE_UNIT_PATH };
/** The unit a new server runs the agent in: the first slot's instance. */
export const AGENT_UNIT_NAME = agentUnitName(FIRST_SLOT);
/** The file placed on servers: the template. */
export const AGENT_UNIT_PATH = AGENT_TEMPLATE_UNIT_PATH;
/** Blocks the metadata service for non-root users; the agent unit Requires= it (and starts After= it). */
export const METADATA_BLOCK_UNIT = 'cortex-metadata-block.service';

// systemd splits ExecStart= on whitespace and expands `$`, `%`, quotes and backslashes: words made
// only of these characters mean exactly themselves, so no quoting is needed or attempted.
const PLAIN_WORD = /^[A-Za-z0-9_./:=,+-]+$/;
const UNIT_OPTION = /^[A-Z][A-Za-z]+=[^\n\r]*$/;

const checkRuntime = (runtime: RuntimeProfile): void => {
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
};

const render = (
  runtime: RuntimeProfile,
  execStart: readonly string[],
  environmentFiles: readonly string[],
  slotDescription: string,
  user: string,
): string =>
  fillTemplate(loadTemplate('cortex-agent.service.tmpl'), {
    runtime: runtime.name,
    slotDescription,
    execStart: execStart.join(' '),
    environmentFiles: environmentFiles.map((f) => `EnvironmentFile=${f}`).join('\n'),
    runtimeOptions: runtime.unitOptions.join('\n'),
    metadataBlockUnit: METADATA_BLOCK_UNIT,
    user,
  });

/** A plain (non-template) unit with one env file. */
export const renderAgentUnit = (runtime: RuntimeProfile, envFile: string = ENV_FILE_PATH): string => {
  checkRuntime(runtime);
  if (!PLAIN_WORD.test(envFile) || !envFile.startsWith('/'))
    throw new Error('envFile must be an absolute plain path');
  return render(runtime, runtime.execStart, [envFile], '', AGENT_USER);
};

/**
 * The template unit `cortex-agent@.service`: instance `%i` is the slot. Its env file is
 * `/etc/cortex/agent-%i.env`; its port comes from `/usr/local/lib/cortex/slot-%i.env`
 * (`CORTEX_AGENT_PORT=…`, listed second so it wins, and a reserved name the env file cannot set),
 * substituted into the runtime's `--port=` word. Its user is `cortex-agent-%i`, one per slot.
 */
export const renderAgentTemplateUnit = (runtime: RuntimeProfile): string => {
  checkRuntime(runtime);
  if (!Number.isInteger(runtime.port) || runtime.port < 1 || runtime.port > 65533)
    throw new Error(`runtime ${runtime.name}: port must be 1-65533 (the slots listen on the next two)`);
  const portWord = `--port=${runtime.port}`;
  // The message names no word: a value in the wrong place may be a key.
  if (runtime.execStart.filter((w) => w === portWord).length !== 1)
    throw new Error(`runtime ${runtime.name}: ExecStart needs exactly one --port=<runtime port> word`);
  const execStart = runtime.execStart.map((w) => (w === portWord ? `--port=\${${SLOT_PORT_VARIABLE}}` : w));
  return render(
    runtime,
    execStart,
    [`${ENV_DIR}/agent-%i.env`, '/usr/local/lib/cortex/slot-%i.env'],
    ', slot %i',
    // One dynamic user per slot (slotUser): the old instance cannot signal the new one.
    `${AGENT_USER}-%i`,
  );
};
