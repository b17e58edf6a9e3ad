import { OrchestratorError, isOrchestratorError } from '../errors';
import type { Logger } from '../log';
import type { Deployment } from '../deployments/deployment-store';
import { connectSsh, waitUntilReady, type RemoteShell } from '../remote/ssh-shell';
import type { Secret } from '../secret';

/**
 * SSH to a deployment's host, pinned to the key in the deployment record — never to a key a
 * provider reports (its stack keeps the first-boot key from user data, dead after the re-key).
 * While a re-key is in flight the record holds a pending key too: either key, and no other, is
 * accepted, and the caller learns which one answered so it can finish the re-key.
 */
export interface HostConnection {
  readonly shell: RemoteShell;
  readonly key: 'current' | 'pending';
}

/** How a connection is made: the real SSH adapter by default (a fake server in unit tests). */
export interface Connectors {
  readonly waitUntilReady: typeof waitUntilReady;
  readonly connectSsh: typeof connectSsh;
}

export const makeHostAccess = (deps: {
  privateKey: () => Promise<Secret>;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  log: Logger;
  connectors?: Connectors;
}) => {
  const via = deps.connectors ?? { waitUntilReady, connectSsh };
  const connect = async (
    dep: Deployment,
    opts: { signal?: AbortSignal; waitMs?: number } = {},
  ): Promise<HostConnection> => {
    if (!dep.ipv4 || !dep.hostPublicKey)
      throw new OrchestratorError('internal', `deployment ${dep.id} has no host recorded yet`);
    const privateKey = await deps.privateKey();
    const base = {
      privateKey,
      connectTimeoutMs: deps.connectTimeoutMs,
      commandTimeoutMs: deps.commandTimeoutMs,
      log: deps.log,
      ...(opts.signal ? { signal: opts.signal } : {}),
    };
    const current = { host: dep.ipv4, hostPublicKey: dep.hostPublicKey };
    try {
      const shell = await via.waitUntilReady(current, { ...base, timeoutMs: opts.waitMs ?? 60_000 });
      return { shell, key: 'current' };
    } catch (err) {
      const mismatch = isOrchestratorError(err) && err.code === 'ssh_host_key_mismatch';
      if (!mismatch || !dep.hostPublicKeyPending) throw err;
      // The re-key had installed its new key when the last worker stopped: only that key may answer now.
      const shell = await via.connectSsh({ host: dep.ipv4, hostPublicKey: dep.hostPublicKeyPending }, base);
      return { shell, key: 'pending' };
    }
  };
  return { connect };
};
export type HostAccess = ReturnType<typeof makeHostAccess>;
