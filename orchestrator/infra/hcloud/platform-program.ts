import * as hcloud from '@pulumi/hcloud';
import * as pulumi from '@pulumi/pulumi';
import type { ConfigMap } from '@pulumi/pulumi/automation';
import { z } from 'zod';
import { ed25519PublicKey, pollInterval } from '../validation';
import { parseStackSettings } from './stack-settings';
import { PULUMI_PROJECT } from './stack-names';

/**
 * What exists once per Hetzner project, in the `platform` stack: the orchestrator's SSH key.
 * Hetzner refuses the same public key twice in a project, so agent stacks reference this key by
 * id (`cortex:sshKeyId`) instead of declaring their own.
 */
export const platformSettingsSchema = z.object({
  /** The orchestrator's public key (OpenSSH): never the private key, which stays on the workers. */
  orchestratorPublicKey: ed25519PublicKey,
  pollInterval,
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
    // Rotating it replaces it: Hetzner refuses a second key of the same name, so the old one goes
    // first (agent servers ignore `sshKeys` changes, so none is touched).
    { provider, deleteBeforeReplace: true },
  );
  return { sshKeyId: key.id, sshKeyFingerprint: key.fingerprint };
};

export const parsePlatformSettings = (raw: unknown): PlatformSettings =>
  parseStackSettings(platformSettingsSchema, raw);

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
