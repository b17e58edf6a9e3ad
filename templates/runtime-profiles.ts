import { loadTemplate } from './render';

/**
 * Agent runtimes as data: what to install, which files to place (never a secret), the command the
 * unit runs, runtime-specific unit options and the health path Caddy's check hits.
 *
 * - `echo`: the default for local mode and the demo. Python 3 standard library only (the host
 *   image must contain `python3`); reports the names of its env variables (nothing derived from a
 *   value) and has a bounded slow endpoint for tests that need a long request.
 * - `openclaw`: production. Installs Node 24 and the pinned OpenClaw gateway at first boot and runs
 *   the gateway on loopback with the keys from the env file (its gateway token included, as
 *   OPENCLAW_GATEWAY_TOKEN). It needs the internet, so it cannot run on the local hosts here; only
 *   its rendering is tested.
 */
export type RuntimeName = 'echo' | 'openclaw';

export interface RuntimeFile {
  readonly path: string;
  readonly content: string;
  readonly permissions: '0644' | '0755';
}

export interface RuntimeProfile {
  readonly name: RuntimeName;
  /** The agent listens on 127.0.0.1:port; only Caddy reaches it. */
  readonly port: number;
  readonly healthPath: string;
  readonly execStart: readonly string[];
  /** Extra [Service] lines: `Key=value`. */
  readonly unitOptions: readonly string[];
  readonly files: readonly RuntimeFile[];
  /** First-boot install steps (cloud-init runcmd, argv form). */
  readonly installCommands: readonly (readonly string[])[];
  /** Debian/Ubuntu packages the runtime needs beyond the base image. */
  readonly packages: readonly string[];
  /** False when the runtime needs the internet at first boot (no local host has it). */
  readonly runsOffline: boolean;
}

export const AGENT_PORT = 18789;
export const OPENCLAW_VERSION = '2026.9.6';
const LIB = '/usr/local/lib/cortex';
export const RESERVED_ENV_NAMES_FILE = 'reserved-env-names.json';

export const echoRuntime = (port: number = AGENT_PORT): RuntimeProfile => ({
  name: 'echo',
  port,
  healthPath: '/health',
  execStart: ['/usr/bin/python3', '-I', `${LIB}/echo-agent.py`, `--port=${port}`],
  // CPython needs no executable heap; deny it. Only Caddy, on loopback, ever talks to it: every
  // other address is refused (an allow list of localhost only).
  unitOptions: [
    'MemoryDenyWriteExecute=yes',
    'ProcSubset=pid',
    'IPAddressAllow=localhost',
    'IPAddressDeny=any',
  ],
  files: [
    { path: `${LIB}/echo-agent.py`, content: loadTemplate('runtimes/echo-agent.py'), permissions: '0755' },
    // The reserved names it hides, the same file env-file.ts refuses them from.
    {
      path: `${LIB}/${RESERVED_ENV_NAMES_FILE}`,
      content: loadTemplate(`runtimes/${RESERVED_ENV_NAMES_FILE}`),
      permissions: '0644',
    },
  ],
  installCommands: [],
  packages: ['python3'],
  runsOffline: true,
});

export const openclawRuntime = (
  port: number = AGENT_PORT,
  version: string = OPENCLAW_VERSION,
): RuntimeProfile => {
  if (!/^\d{4}\.\d{1,2}\.\d{1,3}$/.test(version)) throw new Error('OpenClaw version must look like 2026.9.6');
  return {
    name: 'openclaw',
    port,
    // The gateway's unauthenticated liveness endpoint.
    healthPath: '/health',
    execStart: [
      '/usr/local/bin/openclaw',
      'gateway',
      'run',
      `--port=${port}`,
      '--bind=loopback',
      '--allow-unconfigured',
    ],
    // V8 compiles to executable memory, so MemoryDenyWriteExecute stays off for Node.
    unitOptions: ['MemoryDenyWriteExecute=no', 'LimitNOFILE=65536'],
    files: [
      {
        path: `${LIB}/install-openclaw.sh`,
        content: loadTemplate('runtimes/install-openclaw.sh'),
        permissions: '0755',
      },
    ],
    installCommands: [[`${LIB}/install-openclaw.sh`, version]],
    packages: ['curl', 'ca-certificates', 'xz-utils'],
    runsOffline: false,
  };
};

export const runtimeProfile = (name: RuntimeName, port: number = AGENT_PORT): RuntimeProfile =>
  name === 'echo' ? echoRuntime(port) : openclawRuntime(port);
