import { join } from 'node:path';
import type { Config } from '../config';
import type { Rpc } from '../db/rpc';
import { makeAuditCheckpoints, type AuditCheckpoints } from './audit-checkpoints';
import { makeFileCheckpointKey } from './checkpoint-signer';
import { makeCheckpointStoreFromUrl } from './checkpoint-store';

/**
 * For composition roots (the CLI, the maintenance scheduler): audit checkpoints with the store and
 * key the configuration names, both defaulting to places under `CORTEX_STATE_DIR`.
 */
export const makeAuditCheckpointsFromConfig = (
  config: Pick<Config, 'CORTEX_STATE_DIR' | 'AUDIT_CHECKPOINT_STORE' | 'AUDIT_CHECKPOINT_KEY_FILE'>,
  rpc: Rpc,
): AuditCheckpoints =>
  makeAuditCheckpoints({
    rpc,
    store: makeCheckpointStoreFromUrl(
      config.AUDIT_CHECKPOINT_STORE ?? `file://${join(config.CORTEX_STATE_DIR, 'audit-checkpoints')}`,
    ),
    key: makeFileCheckpointKey(
      config.AUDIT_CHECKPOINT_KEY_FILE ?? join(config.CORTEX_STATE_DIR, 'keys', 'audit_checkpoint_ed25519'),
    ),
  });
