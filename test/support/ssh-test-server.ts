import { spawn, type ChildProcess } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { Server, utils, type Connection } from 'ssh2';

/**
 * An in-process SSH server (ssh2's Server) on 127.0.0.1: it accepts one client key for root, runs
 * each exec request with the local /bin/sh, and hands an `sftp` subsystem to OpenSSH's own
 * sftp-server (Debian's openssh-sftp-server), so the adapter's handshake, host-key pinning,
 * commands and atomic SFTP writes all run over a real SSH connection against real files.
 */
export const SFTP_SERVER = '/usr/lib/openssh/sftp-server';

export interface TestSshServer {
  readonly server: Server;
  readonly port: number;
  /** Every exec request's command line, in order. */
  readonly commands: string[];
  /** Open client connections (end them to simulate a dropped link). */
  readonly connections: Set<Connection>;
  /** While false, the client key is refused, as before cloud-init has installed it. */
  authorizeClient(on: boolean): void;
  /** Public-key attempts refused so far (signature-less probes included). */
  readonly refusals: () => number;
  close(): Promise<void>;
}

/** Kill a command's whole process group: `sh -c 'sleep 60'` leaves `sleep` holding the pipes. */
const killGroup = (child: ChildProcess): void => {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  } catch {
    // the group is already gone
  }
};

export const startTestSshServer = async (opts: {
  hostPrivateKey: string;
  clientPublicKey: string;
  port?: number;
}): Promise<TestSshServer> => {
  const allowed = utils.parseKey(opts.clientPublicKey);
  if (allowed instanceof Error) throw allowed;
  const commands: string[] = [];
  const connections = new Set<Connection>();
  let authorized = true;
  let refusals = 0;
  const server = new Server({ hostKeys: [opts.hostPrivateKey] }, (client) => {
    connections.add(client);
    client.on('close', () => connections.delete(client));
    client.on('error', () => undefined);
    client.on('authentication', (ctx) => {
      if (
        ctx.method !== 'publickey' ||
        ctx.username !== 'root' ||
        !authorized ||
        !ctx.key.data.equals(allowed.getPublicSSH())
      ) {
        if (ctx.method === 'publickey') refusals++;
        return ctx.reject(['publickey']);
      }
      if (!ctx.signature) return ctx.accept();
      return allowed.verify(ctx.blob as Buffer, ctx.signature, ctx.hashAlgo) ? ctx.accept() : ctx.reject();
    });
    client.on('ready', () =>
      client.on('session', (accept) => {
        const session = accept();
        session.on('exec', (acc, _rej, info) => {
          commands.push(info.command);
          const stream = acc();
          // A process group of its own, so a closed channel kills the whole command.
          // argv0 `sh`, as sshd names the user's shell when it runs a command.
          const child = spawn('/bin/sh', ['-c', info.command], { detached: true, argv0: 'sh' });
          stream.pipe(child.stdin);
          child.stdout.pipe(stream, { end: false });
          child.stderr.pipe(stream.stderr, { end: false });
          stream.on('close', () => killGroup(child));
          child.on('close', (code) => {
            if (stream.writable) {
              stream.exit(code ?? 255);
              stream.end();
            }
          });
        });
        session.on('subsystem', (acc, rej, info) => {
          if (info.name !== 'sftp') return rej();
          const stream = acc();
          const child = spawn(SFTP_SERVER, ['-e', '-l', 'ERROR'], { detached: true });
          stream.pipe(child.stdin);
          child.stdout.pipe(stream);
          child.stderr.resume();
          stream.on('close', () => killGroup(child));
          child.on('close', () => stream.end());
        });
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', () => resolve()));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    commands,
    connections,
    authorizeClient: (on) => void (authorized = on),
    refusals: () => refusals,
    close: async () => {
      for (const c of connections) c.end();
      await new Promise((r) => server.close(r));
    },
  };
};
