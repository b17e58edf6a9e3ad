import { fillTemplate, loadTemplate } from './render';
import pins from './runtimes/openclaw-pins.json';

/**
 * Agent runtimes as data: what to install, which files to place (never a secret), the command the
 * unit runs, runtime-specific unit options and the health path Caddy's check hits.
 *
 * - `echo`: the default for local mode and the demo. Python 3 standard library only (the host
 *   image must contain `python3`); reports the names of its env variables (nothing derived from a
 *   value) and has a bounded slow endpoint for tests that need a long request.
 * - `openclaw`: production. Installs Node and OpenClaw at first boot, both pinned with checksums held
 *   in this repository (runtimes/openclaw-pins.json) and npm run without lifecycle scripts, and runs
 *   the gateway on loopback with the keys from the env file (its gateway token included, as
 *   OPENCLAW_GATEWAY_TOKEN). It needs the internet, so it cannot run on the local hosts here; only
 *   its rendering is tested.
 */
export type RuntimeName = 'echo' | 'openclaw';

/**
 * How an agent moves to a new environment (orchestrator/steps/agent-swap.ts): `blue-green` starts
 * a second instance beside the running one and moves Caddy to it once healthy; `held-restart`
 * restarts the one instance in place while Caddy holds requests (`lb_try_duration`).
 */
export type SwapMode = 'blue-green' | 'held-restart';

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
  /** How a new environment is swapped in; `blue-green` needs a runtime that can run twice at once. */
  readonly swapMode: SwapMode;
}

export const AGENT_PORT = 18789;
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
  // Stateless and port-configurable: two instances run side by side during a swap.
  swapMode: 'blue-green',
});

export interface OpenclawPins {
  readonly node: {
    readonly version: string;
    readonly sha256: { readonly x64: string; readonly arm64: string };
  };
  readonly openclaw: { readonly version: string; readonly integrity: string; readonly sha512: string };
}
/** Versions and checksums held in the repository (templates/runtimes/openclaw-pins.json). */
export const OPENCLAW_PINS: OpenclawPins = pins;
export const OPENCLAW_VERSION = OPENCLAW_PINS.openclaw.version;

const HEX = (bytes: number): RegExp => new RegExp(`^[0-9a-f]{${bytes * 2}}$`);

/** The first-boot install script with its pins filled in; every pin is checked for shape first. */
export const renderOpenclawInstall = (p: OpenclawPins = OPENCLAW_PINS): string => {
  if (!/^24\.\d{1,2}\.\d{1,2}$/.test(p.node.version))
    throw new Error('node.version must be a 24.x.y release');
  if (!HEX(32).test(p.node.sha256.x64) || !HEX(32).test(p.node.sha256.arm64))
    throw new Error('node.sha256 must be SHA-256 hex digests');
  if (!/^\d{4}\.\d{1,2}\.\d{1,3}$/.test(p.openclaw.version))
    throw new Error('openclaw.version must look like 2026.9.6');
  if (!HEX(64).test(p.openclaw.sha512)) throw new Error('openclaw.sha512 must be a SHA-512 hex digest');
  // The hex and npm's integrity string are one digest: a pin edited in one place only fails here.
  if (`sha512-${Buffer.from(p.openclaw.sha512, 'hex').toString('base64')}` !== p.openclaw.integrity)
    throw new Error('openclaw.sha512 and openclaw.integrity disagree');
  return fillTemplate(loadTemplate('runtimes/install-openclaw.sh'), {
    nodeVersion: p.node.version,
    nodeSha256X64: p.node.sha256.x64,
    nodeSha256Arm64: p.node.sha256.arm64,
    openclawVersion: p.openclaw.version,
    openclawSha512: p.openclaw.sha512,
  });
};

export const openclawRuntime = (port: number = AGENT_PORT): RuntimeProfile => ({
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
  files: [{ path: `${LIB}/install-openclaw.sh`, content: renderOpenclawInstall(), permissions: '0755' }],
  installCommands: [[`${LIB}/install-openclaw.sh`]],
  packages: ['curl', 'ca-certificates', 'xz-utils'],
  runsOffline: false,
  // One gateway per agent: it keeps sessions and memory in its state directory and holds the
  // channel connections (a Telegram bot's long poll, a WhatsApp session) that a second instance
  // would fight over; so it is restarted in place, with Caddy holding requests meanwhile.
  swapMode: 'held-restart',
});

export const runtimeProfile = (name: RuntimeName, port: number = AGENT_PORT): RuntimeProfile =>
  name === 'echo' ? echoRuntime(port) : openclawRuntime(port);
