import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { Client } from 'ssh2';
import { stringify } from 'yaml';
import type { HostSpec } from '../../orchestrator/infra/host-provider';
import { generateHostKeyPair } from '../../orchestrator/remote/host-keys';
import { Secret } from '../../orchestrator/secret';

/**
 * Helpers for tests and benchmarks that boot local hosts: a spec with a fresh pinned host key and a
 * minimal cloud-config, a raw TCP probe, and an SSH login that verifies the pinned key. The real
 * cloud-config and remote shell belong to templates/ and orchestrator/remote/; this stays minimal on
 * purpose so the provider is tested on its own.
 */
export interface TestHost {
  readonly spec: HostSpec;
  /** The orchestrator side: the key that logs in as root. */
  readonly clientPrivateKey: string;
}

export const makeTestHostSpec = (
  opts: { writeFiles?: { path: string; content: string; permissions?: string }[] } = {},
): TestHost => {
  // Not ssh2's utils.generateKeyPairSync('ed25519'): about one key in 256 loses a leading zero byte
  // of its public half, and sshd then finds "no hostkeys available" (seen in a 50-host run).
  const hostKey = generateHostKeyPair();
  const clientKey = generateHostKeyPair();
  const deploymentId = randomUUID();
  const cloudConfig = {
    // Root logs in with the key (Debian's default prefixes root's key with a "please log in as debian" command).
    disable_root: false,
    ssh_deletekeys: true,
    ssh_keys: { ed25519_private: hostKey.privateKey.reveal(), ed25519_public: hostKey.publicKey },
    ssh_authorized_keys: [clientKey.publicKey],
    ...(opts.writeFiles ? { write_files: opts.writeFiles } : {}),
  };
  return {
    spec: {
      deploymentId,
      orgId: randomUUID(),
      subdomain: `t-${deploymentId.slice(0, 8)}`,
      userData: new Secret(`#cloud-config\n${stringify(cloudConfig)}`),
      hostPublicKey: hostKey.publicKey,
    },
    clientPrivateKey: clientKey.privateKey.reveal(),
  };
};

/** Resolves when a TCP connection to host:port is accepted; rejects after `timeoutMs`. */
export const waitForTcp = async (host: string, port: number, timeoutMs: number): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port, timeout: 1_000 });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
      s.once('timeout', () => {
        s.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`${host}:${port} did not accept a connection within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const keyBlob = (openSshPublicKey: string): Buffer =>
  Buffer.from(openSshPublicKey.trim().split(' ')[1] ?? '', 'base64');

/** Log in as root verifying the pinned host key, run one command, return its output. */
export const sshRun = (
  host: string,
  auth: { privateKey: string; hostPublicKey: string },
  command: string,
  timeoutMs = 10_000,
): Promise<{ stdout: string; code: number | null }> =>
  new Promise((resolve, reject) => {
    const client = new Client();
    const pinned = keyBlob(auth.hostPublicKey);
    let stdout = '';
    client
      .on('ready', () => {
        client.exec(command, (err, stream) => {
          if (err) {
            client.end();
            return reject(err);
          }
          stream.on('data', (d: Buffer) => (stdout += d.toString()));
          stream.stderr.on('data', () => undefined);
          stream.on('close', (code: number | null) => {
            client.end();
            resolve({ stdout, code });
          });
        });
      })
      .on('error', reject)
      .connect({
        host,
        port: 22,
        username: 'root',
        privateKey: auth.privateKey,
        readyTimeout: timeoutMs,
        hostVerifier: (key: Buffer) => key.equals(pinned),
      });
  });

/** Retry `sshRun(…, 'true')` until it succeeds: seconds until SSH is ready with the pinned key. */
export const waitForSsh = async (
  host: string,
  auth: { privateKey: string; hostPublicKey: string },
  timeoutMs: number,
): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await sshRun(host, auth, 'true', Math.max(1_000, Math.min(5_000, deadline - Date.now())));
      if (r.code === 0) return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline) throw new Error(`SSH on ${host} not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
};
