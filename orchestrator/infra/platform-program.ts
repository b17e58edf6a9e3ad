import * as hcloud from '@pulumi/hcloud';
import * as pulumi from '@pulumi/pulumi';
import type { ConfigMap } from '@pulumi/pulumi/automation';
import { z } from 'zod';
import { OrchestratorError } from '../errors';
import { PULUMI_PROJECT } from './stack-names';

/**
 * What exists once per Hetzner project, in the `platform` stack: the orchestrator's SSH key.
 * Hetzner refuses the same public key twice in a project, so agent stacks reference this key by
 * id (`cortex:sshKeyId`) instead of declaring their own.
 */
export const platformSettingsSchema = z.object({
  /** The orchestrator's public key (OpenSSH): never the private key, which stays on the workers. */
  orchestratorPublicKey: z
    .string()
    .regex(
      /^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$/,
      'must be an OpenSSH public key',
    ),
  pollInterval: z
    .string()
    .regex(/^\d+(ms|s)$/, 'must be a duration like 5s')
    .default('5s'),
});
export type PlatformSettings = z.output<typeof platformSettingsSchema>;

export interface PlatformStackOutputs {
  readonly sshKeyId: pulumi.Output<string>;
  readonly sshKeyFingerprint: pulumi.Output<string>;
}

export const SSH_KEY_NAME = 'cortex-orchestrator';

export const definePlatformStack = (settings: PlatformSettings): PlatformStackOutputs => {
  const provider = new hcloud.Provider('hcloud', {
    pollInterval: settings.pollInterval,
    pollFunction: 'constant',
  });
  const key = new hcloud.SshKey(
    'orchestrator-key',
    { name: SSH_KEY_NAME, publicKey: settings.orchestratorPublicKey, labels: { 'managed-by': 'cortex' } },
    // Every agent server references this key; deleting it by accident would be noisy, not fatal.
    { provider },
  );
  return { sshKeyId: key.id, sshKeyFingerprint: key.fingerprint };
};

export const parsePlatformSettings = (raw: unknown): PlatformSettings => {
  const result = platformSettingsSchema.safeParse(raw);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue?.path.join('.') || '(root)';
  throw new OrchestratorError(
    'invalid_input',
    `stack config ${PULUMI_PROJECT}:${field}: ${issue?.message ?? 'invalid'}`,
    {
      field,
    },
  );
};

export const platformStackConfig = (settings: PlatformSettings): ConfigMap => ({
  [`${PULUMI_PROJECT}:orchestratorPublicKey`]: { value: settings.orchestratorPublicKey, secret: false },
  [`${PULUMI_PROJECT}:pollInterval`]: { value: settings.pollInterval, secret: false },
});

export const platformProgram = async (): Promise<PlatformStackOutputs> => {
  const config = new pulumi.Config(PULUMI_PROJECT);
  return definePlatformStack(
    parsePlatformSettings({
      orchestratorPublicKey: config.get('orchestratorPublicKey'),
      pollInterval: config.get('pollInterval'),
    }),
  );
};
