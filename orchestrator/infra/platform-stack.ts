import { OrchestratorError } from '../errors';
import { platformProgram, platformStackConfig, type PlatformSettings } from './platform-program';
import type { StackOpOptions, StackRunner } from './stack-runner';
import { PLATFORM_STACK } from './stack-names';

/** Create or update the `platform` stack (once per Hetzner project); its SSH key id. */
export const ensurePlatformStack = async (
  runner: StackRunner,
  settings: PlatformSettings,
  opts?: StackOpOptions,
): Promise<string> =>
  sshKeyIdOf(await runner.up(PLATFORM_STACK, platformProgram, platformStackConfig(settings), opts));

/**
 * The orchestrator's SSH key id, read once from the platform stack's outputs (no Hetzner request:
 * outputs come from the Pulumi backend). A failed read is not cached.
 */
export const platformSshKeyId = (runner: StackRunner): (() => Promise<string>) => {
  let cached: Promise<string> | undefined;
  return () => {
    cached ??= runner.outputs(PLATFORM_STACK, platformProgram).then(sshKeyIdOf);
    return cached.catch((err: unknown) => {
      cached = undefined;
      throw err;
    });
  };
};

const sshKeyIdOf = (outputs: Record<string, { value: unknown }> | undefined): string => {
  const id = outputs?.['sshKeyId']?.value;
  if ((typeof id === 'string' && /^\d+$/.test(id)) || typeof id === 'number') return String(id);
  throw new OrchestratorError(
    'config_invalid',
    `the "${PLATFORM_STACK}" stack has no sshKeyId output: create it once with \`pulumi up -s ${PLATFORM_STACK}\` (docs/infra.md)`,
  );
};
