import { invalidInput } from '../orchestrator/errors';
import { fillTemplate, loadTemplate } from './render';

/**
 * The agent server's Caddyfile: HTTPS for `<subdomain>.<zone>`, reverse-proxied to the agent on
 * 127.0.0.1. Production gets a certificate from the ACME CA (Let's Encrypt) with the platform's
 * contact email; local mode uses Caddy's own CA (`tls internal`), does not touch any trust store,
 * and keeps its storage at a known path so the CA root can be fetched and pinned by the health
 * check: `<storage>/pki/authorities/local/root.crt`.
 */
export const CADDYFILE_PATH = '/etc/caddy/Caddyfile';
export const CADDY_ADMIN_SOCKET = '/var/lib/caddy/admin.sock';
export const CADDY_LOCAL_STORAGE = '/var/lib/caddy/storage';
export const caddyLocalRootCaPath = (storage = CADDY_LOCAL_STORAGE): string =>
  `${storage}/pki/authorities/local/root.crt`;

export type CaddyTls =
  | { readonly mode: 'acme'; readonly email: string }
  | { readonly mode: 'internal'; readonly storageDir?: string };

export interface CaddyfileInput {
  /** Fully qualified site name, `<subdomain>.<zone>`. */
  readonly siteName: string;
  readonly agentPort: number;
  readonly tls: CaddyTls;
  /** Port to serve HTTPS on; default 443 (tests bind a high port). */
  readonly httpsPort?: number;
  readonly adminSocket?: string;
  /** How long a request waits for a restarting agent; default 15s. */
  readonly tryDurationSeconds?: number;
}

const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;
// Conservative: no spaces, quotes, braces or anything else the Caddyfile lexer gives meaning to.
const EMAIL = /^[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$/;
const ABS_PATH = /^\/[A-Za-z0-9._/-]{1,200}$/;

const checkPort = (field: string, p: number): string => {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidInput(field, 'must be a port number 1-65535');
  return String(p);
};

export const renderCaddyfile = (input: CaddyfileInput): string => {
  if (!HOSTNAME.test(input.siteName))
    throw invalidInput('siteName', 'must be a lower-case DNS name like a1.agents.example.com');
  const port = checkPort('agentPort', input.agentPort);
  const adminSocket = input.adminSocket ?? CADDY_ADMIN_SOCKET;
  if (!ABS_PATH.test(adminSocket)) throw invalidInput('adminSocket', 'must be an absolute path');
  const tryDuration = input.tryDurationSeconds ?? 15;
  if (!Number.isInteger(tryDuration) || tryDuration < 1 || tryDuration > 120)
    throw invalidInput('tryDurationSeconds', 'must be a whole number of seconds, 1-120');

  let globalOptions: string[];
  let tlsDirective: string;
  if (input.tls.mode === 'acme') {
    if (!EMAIL.test(input.tls.email)) throw invalidInput('tls.email', 'must be a plain email address');
    globalOptions = [`email ${input.tls.email}`];
    tlsDirective = '# certificate: automatic HTTPS (ACME)';
  } else if (input.tls.mode === 'internal') {
    const storage = input.tls.storageDir ?? CADDY_LOCAL_STORAGE;
    if (!ABS_PATH.test(storage)) throw invalidInput('tls.storageDir', 'must be an absolute path');
    globalOptions = ['skip_install_trust', `storage file_system ${storage}`];
    tlsDirective = 'tls internal';
  } else {
    throw invalidInput('tls.mode', 'must be acme or internal');
  }
  if (input.httpsPort !== undefined)
    globalOptions.push(`https_port ${checkPort('httpsPort', input.httpsPort)}`);

  return fillTemplate(loadTemplate('Caddyfile.tmpl'), {
    mode: input.tls.mode === 'acme' ? 'production' : 'local',
    adminSocket,
    globalOptions: globalOptions.map((l) => `\t${l}`).join('\n'),
    siteAddress: input.httpsPort === undefined ? input.siteName : `${input.siteName}:${input.httpsPort}`,
    tlsDirective: `\t${tlsDirective}`,
    agentPort: port,
    tryDuration: `${tryDuration}s`,
    tryInterval: '250ms',
  });
};
