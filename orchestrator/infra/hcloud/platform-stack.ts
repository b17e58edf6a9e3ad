import { OrchestratorError } from '../../errors';
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
 * The orchestrator's SSH key id from the platform stack's outputs (no Hetzner request: outputs come
 * from the Pulumi backend), cached for `maxAgeMs` (default 60 s) so that a rotated key (a new id)
 * reaches new servers within a minute in every worker. A failed read is not cached.
 */
export const platformSshKeyId = (
  runner: StackRunner,
  opts: { readonly maxAgeMs?: number; readonly now?: () => number } = {},
): (() => Promise<string>) => {
  const maxAgeMs = opts.maxAgeMs ?? 60_000;
  const now = opts.now ?? Date.now;
  let cached: { id: Promise<string>; at: number } | undefined;
  return () => {
    if (!cached || now() - cached.at >= maxAgeMs)
      cached = { id: runner.outputs(PLATFORM_STACK, platformProgram).then(sshKeyIdOf), at: now() };
    const mine = cached;
    return mine.id.catch((err: unknown) => {
      if (cached === mine) cached = undefined;
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
