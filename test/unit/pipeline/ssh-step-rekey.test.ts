import type { Deployment, DeploymentStore } from '../../../orchestrator/deployments/deployment-store';
import { OrchestratorError } from '../../../orchestrator/errors';
import { makeLogger } from '../../../orchestrator/log';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { rekeyCommands } from '../../../orchestrator/remote/rekey';
import type { RemoteShell, SshTarget } from '../../../orchestrator/remote/ssh-shell';
import { makeHostAccess } from '../../../orchestrator/steps/host-access';
import { provisionSteps } from '../../../orchestrator/steps/provision-steps';
import type { StepContext } from '../../../orchestrator/steps/step-runner';
import { makeFakeShell, type FakeShell } from '../../support/fake-shell';

/**
 * The `ssh` step's re-key, cut after each of its remote commands, then run again (a retry, or
 * another worker): it always ends with the record pinning exactly the key the server serves, and
 * at no point does it accept a key that is neither the pinned nor the pending one. The fake
 * server serves the public half of its private host key file per connection (OpenSSH < 9.8).
 */
const log = makeLogger({ level: 'silent' });

/** The deployments contract's host-key rules, in memory (pgTAP proves the SQL). */
const keyStore = (initial: string) => {
  let dep = {
    id: '7d3a3f0e-8f7c-4d2e-9a43-0c3b8f1e2a10',
    ipv4: '10.0.0.2',
    hostPublicKey: initial,
    hostPublicKeyPending: null,
    hostRekeyedAt: null,
  } as unknown as Deployment;
  const store = {
    get: async () => dep,
    hostKey: async (_id: string, action: string, key?: string) => {
      if (action === 'pending') dep = { ...dep, hostPublicKeyPending: key ?? null };
      if (action === 'promote') {
        if (key !== dep.hostPublicKeyPending)
          throw new OrchestratorError('invalid_input', 'key: is not the pending host key');
        dep = { ...dep, hostPublicKey: key ?? null, hostPublicKeyPending: null, hostRekeyedAt: 'now' };
      }
      return dep;
    },
  };
  return { store: store as unknown as DeploymentStore, now: () => dep };
};

/** A connector to the fake server: the handshake succeeds only with the key it serves right now. */
const connectorsFor = (f: FakeShell, seen: string[]) => {
  const connect = async (target: SshTarget): Promise<RemoteShell> => {
    seen.push(target.hostPublicKey);
    const served = f.servedHostKey();
    if (!served) throw new OrchestratorError('ssh_connect_failed', 'fake: connection refused');
    if (served !== target.hostPublicKey)
      throw new OrchestratorError('ssh_host_key_mismatch', 'fake: host key mismatch');
    return f.reconnect();
  };
  return { connectSsh: connect, waitUntilReady: connect } as never;
};

const sshStep = (store: DeploymentStore, f: FakeShell, seen: string[]) => {
  const access = makeHostAccess({
    privateKey: async () => generateHostKeyPair().privateKey,
    connectTimeoutMs: 100,
    commandTimeoutMs: 100,
    log,
    connectors: connectorsFor(f, seen),
  });
  const steps = provisionSteps({
    store,
    access,
    secrets: {} as never,
    hosts: {} as never,
    dns: {} as never,
    orchestratorPublicKey: async () => '',
    zone: 'agents.example.test',
    tls: { mode: 'internal' },
    installPackages: false,
  });
  const step = steps.find((s) => s.name === 'ssh');
  if (!step) throw new Error('no ssh step');
  return step;
};

const ctx = (dep: Deployment): StepContext => ({
  deployment: dep,
  run: 1,
  jobId: 'provision-x',
  signal: new AbortController().signal,
  log,
});

const REKEY_COMMANDS = Object.values(rekeyCommands()).map((argv) => argv.join(' '));
// clean, generate, readPublic, installPublic, installPrivate, checkConfig, then the sshd restart.
const CUT_POINTS = [...REKEY_COMMANDS, 'systemctl restart ssh.service'];

describe('ssh step: re-key cut after each remote command, then resumed', () => {
  it.each(CUT_POINTS.map((c, i) => [i + 1, c]))(
    'cut after command %i (%s): the retry pins exactly the key the server serves',
    async (_n, cutAfter) => {
      const f = makeFakeShell();
      f.on('cloud-init', () => ({ code: 0, stdout: Buffer.from('status: done\n'), stderr: Buffer.alloc(0) }));
      const boot = f.servedHostKey() ?? '';
      const { store, now } = keyStore(boot);
      const seen: string[] = [];
      const step = sshStep(store, f, seen);
      // Cut the connection right after `cutAfter` ran.
      let cut = false;
      const realExec = f.shell.exec;
      f.shell.exec = async (argv, opts) => {
        const r = await realExec(argv, opts);
        if (!cut && argv.join(' ') === cutAfter) {
          cut = true;
          await f.shell.close();
        }
        return r;
      };
      const first = await step.apply(ctx(now())).catch((e: unknown) => e);
      const lastCommand = cutAfter === CUT_POINTS[CUT_POINTS.length - 1];
      // Cut after the last command: the re-key had nothing left to send, but its proof needs a
      // fresh connection, which works (the cut closed only the old one).
      if (!lastCommand) expect(first).toMatchObject({ code: 'ssh_connect_failed' });

      await step.apply(ctx(now()));
      const after = now();
      expect(after.hostPublicKeyPending).toBeNull();
      expect(after.hostRekeyedAt).not.toBeNull();
      expect(after.hostPublicKey).toBe(f.servedHostKey());
      expect(after.hostPublicKey).not.toBe(boot);
      // Only the pinned or the pending key was ever offered to a handshake.
      const allowed = new Set([boot, after.hostPublicKey]);
      expect(seen.filter((k) => !allowed.has(k))).toEqual([]);
    },
  );

  it('a server that serves neither the pinned nor the pending key is refused (mismatch), nothing promoted', async () => {
    const f = makeFakeShell();
    const boot = f.servedHostKey() ?? '';
    const { store, now } = keyStore(generateHostKeyPair().publicKey);
    await store.hostKey(now().id, 'pending', generateHostKeyPair().publicKey);
    const step = sshStep(store, f, []);
    await expect(step.apply(ctx(now()))).rejects.toMatchObject({ code: 'ssh_host_key_mismatch' });
    expect(now().hostPublicKey).not.toBe(boot);
    expect(now().hostRekeyedAt).toBeNull();
  });
});
