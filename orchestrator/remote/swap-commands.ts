import { posix } from 'node:path';
import { invalidInput } from '../errors';
import type { Argv } from './agent-commands';

/**
 * Remote commands of the agent swap (orchestrator/steps/agent-swap.ts), as data like
 * agent-commands.ts. None reads a file's content back: the env files are copied and moved on the
 * host as root, never fetched.
 */
const ENV_DIR = '/etc/cortex';
const ENV_NAME = /^[a-z][a-z0-9.-]{0,63}$/;
const HOST = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;
const HTTP_PATH = /^\/[A-Za-z0-9._~/?=&%-]{0,200}$/;

/** A plain file directly in /etc/cortex (the root-only env file directory). */
const envDirFile = (p: string): string => {
  if (posix.dirname(p) !== ENV_DIR || !ENV_NAME.test(posix.basename(p)))
    throw invalidInput('path', 'must be a plain file name in /etc/cortex');
  return p;
};
const port = (p: number): string => {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidInput('port', 'must be a port number 1-65535');
  return String(p);
};
const httpPath = (p: string): string => {
  if (!HTTP_PATH.test(p)) throw invalidInput('path', 'must be a plain absolute URL path');
  return p;
};

export const swapCommands = {
  /** Copy an env file to another name in /etc/cortex, root:root 0600 kept (no-op if it does not exist). */
  copyEnvFile: (from: string, to: string): Argv => [
    'sh',
    '-c',
    'if [ -e "$1" ]; then cp --preserve=mode,ownership --no-dereference -- "$1" "$2.tmp" && mv -f -- "$2.tmp" "$2"; fi',
    'sh',
    envDirFile(from),
    envDirFile(to),
  ],
  /** Rename one env file over another (atomic, same directory). */
  moveEnvFile: (from: string, to: string): Argv => ['mv', '-f', '--', envDirFile(from), envDirFile(to)],
  /**
   * GET https://<site>:<port><path> through Caddy on this host (the name resolved to 127.0.0.1),
   * the certificate verified (against Caddy's local CA root when given, else the system store).
   * Prints the HTTP status only; the body is discarded.
   */
  httpsProbeThroughCaddy: (o: {
    siteName: string;
    httpsPort: number;
    path: string;
    caPath?: string;
  }): Argv => {
    if (!HOST.test(o.siteName)) throw invalidInput('siteName', 'must be a DNS name');
    const p = port(o.httpsPort);
    return [
      'curl',
      '--silent',
      '--max-time',
      '5',
      '--output',
      '/dev/null',
      '--write-out',
      '%{http_code}',
      '--resolve',
      `${o.siteName}:${p}:127.0.0.1`,
      ...(o.caPath ? ['--cacert', o.caPath] : []),
      `https://${o.siteName}:${p}${httpPath(o.path)}`,
    ];
  },
  /** GET http://127.0.0.1:<port><path> on the host, straight to an agent instance (not through Caddy). */
  httpProbeLoopback: (agentPort: number, path: string): Argv => [
    'curl',
    '--silent',
    '--max-time',
    '3',
    '--output',
    '/dev/null',
    '--write-out',
    '%{http_code}',
    `http://127.0.0.1:${port(agentPort)}${httpPath(path)}`,
  ],
} as const;
