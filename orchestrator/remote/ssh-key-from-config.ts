import type { Config } from '../config';
import type { AuditContext } from '../secrets/secret-input';
import type { Secret } from '../secret';
import { makeSshKeySource, type SshKeySource } from './ssh-key-source';

/**
 * For composition roots: the orchestrator's SSH key source as configured (`SSH_KEY_SOURCE`). In
 * vault mode each load is an audited platform-secret read, attributed to `actor`.
 */
export const makeSshKeySourceFromConfig = (
  config: Pick<Config, 'SSH_KEY_SOURCE' | 'SSH_PRIVATE_KEY_FILE' | 'SSH_PRIVATE_KEY_SECRET'>,
  deps: { readPlatformSecret: (name: string, ctx?: AuditContext) => Promise<Secret>; actor: string },
): SshKeySource =>
  config.SSH_KEY_SOURCE === 'file'
    ? makeSshKeySource({ source: 'file', file: config.SSH_PRIVATE_KEY_FILE })
    : makeSshKeySource({
        source: 'vault',
        secretName: config.SSH_PRIVATE_KEY_SECRET,
        readPlatformSecret: (name) => deps.readPlatformSecret(name, { actor: deps.actor }),
      });
