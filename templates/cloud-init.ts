import YAML from 'yaml';
import { invalidInput } from '../orchestrator/errors';
import { type HostKeyPair, parsePublicKey } from '../orchestrator/remote/host-keys';
import { isSecret, Secret } from '../orchestrator/secret';
import {
  AGENT_SLOTS,
  ENV_DIR,
  SLOT_PORT_VARIABLE,
  UPSTREAM_SCRIPT_PATH,
  UPSTREAM_UNIT,
  UPSTREAM_UNIT_PATH,
  slotPort,
  slotSettingsPath,
} from './agent-slots';
import { CADDYFILE_PATH, type CaddyTls, renderCaddyfile } from './caddyfile';
import { fillTemplate, loadTemplate } from './render';
import type { RuntimeProfile } from './runtime-profiles';
import { AGENT_UNIT_PATH, METADATA_BLOCK_UNIT, renderAgentTemplateUnit } from './systemd-unit';

export { METADATA_BLOCK_UNIT };

/**
 * Cloud-init user data for an agent server, built as an object and serialized with `yaml` —
 * the same document for Hetzner and for local hosts (NoCloud seed). It carries the host key the
 * orchestrator generated (so the first SSH connection is already pinned) and the orchestrator's
 * public key, and places only non-secret files. The metadata service serves this document to
 * anything on the server, so it must never hold a customer secret: the builder accepts no field
 * that could carry one and rejects unknown fields and Secret values (at any depth, the host key
 * excepted) at run time too.
 */
export type MetadataBlock = 'required' | 'best-effort';

export interface ServerFile {
  readonly path: string;
  readonly content: string;
  readonly permissions: '0644' | '0755';
}

export interface AgentServerFilesInput {
  /** `<subdomain>.<zone>`: the Caddy site. */
  readonly siteName: string;
  readonly tls: CaddyTls;
  readonly runtime: RuntimeProfile;
  /** `required` in production; `best-effort` where the image may lack nft/iptables and there is no metadata service (local). */
  readonly metadataBlock: MetadataBlock;
  /** HTTPS port for Caddy; default 443. */
  readonly httpsPort?: number;
}

export interface UserDataInput extends AgentServerFilesInput {
  /** Host name label (the subdomain). */
  readonly hostname: string;
  readonly hostKey: HostKeyPair;
  /** The orchestrator's OpenSSH public key, installed for root. */
  readonly orchestratorPublicKey: string;
  /** Install `packages` at first boot: only where the server can reach a package mirror. */
  readonly installPackages: boolean;
}

export const SSHD_DROPIN_PATH = '/etc/ssh/sshd_config.d/10-cortex.conf';
export const METADATA_BLOCK_SCRIPT_PATH = '/usr/local/sbin/cortex-block-metadata';
export { ENV_DIR };
/** Packages every agent server needs (present in the local image; installed on Hetzner). */
export const BASE_PACKAGES = ['caddy', 'nftables', 'openssh-server'] as const;

const ALLOWED_INPUT_KEYS: ReadonlySet<string> = new Set([
  'siteName',
  'tls',
  'runtime',
  'metadataBlock',
  'httpsPort',
  'hostname',
  'hostKey',
  'orchestratorPublicKey',
  'installPackages',
]);
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const FILE_PATH = /^\/[A-Za-z0-9._/-]{1,200}$/;
const DEB_PACKAGE = /^[a-z0-9][a-z0-9+.-]{1,62}$/;

// Runtime profiles are code, not customer input, but what they contribute is checked all the same:
// nothing reaches the document without a shape, except the file contents and commands that are the
// profile's whole point.
const checkRuntimeFiles = (runtime: AgentServerFilesInput['runtime']): void =>
  runtime.files.forEach((f, i) => {
    if (!FILE_PATH.test(f.path) || f.path.split('/').includes('..'))
      throw invalidInput(`runtime.files[${i}].path`, 'must be a plain absolute path');
    if (f.permissions !== '0644' && f.permissions !== '0755')
      throw invalidInput(`runtime.files[${i}].permissions`, 'must be 0644 or 0755');
    if (typeof f.content !== 'string') throw invalidInput(`runtime.files[${i}].content`, 'must be text');
  });

/** The non-secret files of an agent server: cloud-init places them at boot, the configure step rewrites them over SSH. */
export const agentServerFiles = (input: AgentServerFilesInput): ServerFile[] => {
  if (input.metadataBlock !== 'required' && input.metadataBlock !== 'best-effort')
    throw invalidInput('metadataBlock', 'must be required or best-effort');
  checkRuntimeFiles(input.runtime);
  const port: unknown = input.runtime.port;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65533)
    throw invalidInput('runtime.port', 'must be a port number 1-65533 (the slots listen on the next two)');
  return [
    { path: SSHD_DROPIN_PATH, content: loadTemplate('sshd-cortex.conf'), permissions: '0644' },
    {
      path: METADATA_BLOCK_SCRIPT_PATH,
      content: loadTemplate('cortex-block-metadata.sh'),
      permissions: '0755',
    },
    {
      path: `/etc/systemd/system/${METADATA_BLOCK_UNIT}`,
      content: fillTemplate(loadTemplate('cortex-metadata-block.service.tmpl'), {
        requiredFlag: input.metadataBlock === 'required' ? ' --required' : '',
      }),
      permissions: '0644',
    },
    ...input.runtime.files,
    // The blue/green template unit and each slot's port (no secret: the env files are written by
    // the orchestrator only, over SSH).
    { path: AGENT_UNIT_PATH, content: renderAgentTemplateUnit(input.runtime), permissions: '0644' },
    ...AGENT_SLOTS.map((slot): ServerFile => ({
      path: slotSettingsPath(slot),
      content: `# Written by the cortex orchestrator: slot ${slot}'s port (no secret).\n${SLOT_PORT_VARIABLE}=${slotPort(input.runtime.port, slot)}\n`,
      permissions: '0644',
    })),
    // Caddy's upstream, the service port, routed to the active slot by an nft redirect.
    { path: UPSTREAM_SCRIPT_PATH, content: loadTemplate('cortex-upstream.sh'), permissions: '0755' },
    {
      path: UPSTREAM_UNIT_PATH,
      content: fillTemplate(loadTemplate('cortex-upstream.service.tmpl'), {
        metadataBlockUnit: METADATA_BLOCK_UNIT,
        scriptPath: UPSTREAM_SCRIPT_PATH,
        servicePort: String(input.runtime.port),
      }),
      permissions: '0644',
    },
    {
      path: CADDYFILE_PATH,
      content: renderCaddyfile({
        siteName: input.siteName,
        agentPort: input.runtime.port,
        tls: input.tls,
        ...(input.httpsPort === undefined ? {} : { httpsPort: input.httpsPort }),
      }),
      permissions: '0644',
    },
  ];
};

/** The one Secret user data carries on purpose: the host key that the first connection pins. */
const HOST_PRIVATE_KEY_FIELD = 'hostKey.privateKey';

/**
 * A Secret anywhere in the input (nested objects and arrays included) is refused, except the host
 * key: a customer key passed by mistake, in any field, must fail loudly rather than be served by
 * the metadata service.
 */
const rejectSecrets = (value: unknown, field: string, depth = 0): void => {
  if (isSecret(value)) {
    if (field === HOST_PRIVATE_KEY_FIELD) return;
    throw invalidInput(field, 'must not be a Secret: user data is readable through the metadata service');
  }
  if (value === null || typeof value !== 'object') return;
  if (depth > 8) throw invalidInput(field, 'is nested too deeply');
  if (Array.isArray(value)) value.forEach((v, i) => rejectSecrets(v, `${field}[${i}]`, depth + 1));
  else for (const [k, v] of Object.entries(value)) rejectSecrets(v, field ? `${field}.${k}` : k, depth + 1);
};

const rejectForeignInput = (input: object): void => {
  for (const k of Object.keys(input))
    if (!ALLOWED_INPUT_KEYS.has(k))
      throw invalidInput(k, 'is not accepted in user data (it must never carry a secret)');
  rejectSecrets(input, '');
  if (!isSecret((input as Partial<UserDataInput>).hostKey?.privateKey))
    throw invalidInput(HOST_PRIVATE_KEY_FIELD, 'must be a Secret (from generateHostKeyPair)');
};

export const buildUserData = (input: UserDataInput): Record<string, unknown> => {
  rejectForeignInput(input);
  if (!LABEL.test(input.hostname)) throw invalidInput('hostname', 'must be a DNS label (a-z, 0-9, -)');
  parsePublicKey(input.hostKey.publicKey, 'hostKey.publicKey');
  const authorized = input.orchestratorPublicKey.trim();
  if (!/^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/]+={0,2}$/.test(authorized))
    throw invalidInput(
      'orchestratorPublicKey',
      'must be one OpenSSH public key line without options or comment',
    );

  const files = agentServerFiles(input);
  input.runtime.packages.forEach((p, i) => {
    if (!DEB_PACKAGE.test(p)) throw invalidInput(`runtime.packages[${i}]`, 'must be a Debian package name');
  });
  const packages = [...new Set([...BASE_PACKAGES, ...input.runtime.packages])];
  const runcmd: (readonly string[])[] = [
    ['systemctl', 'daemon-reload'],
    ['systemctl', 'enable', '--now', METADATA_BLOCK_UNIT],
    // The service port routed to the first slot (no agent runs yet: nothing is reachable).
    ['systemctl', 'enable', '--now', UPSTREAM_UNIT],
    ['install', '-d', '-m', '0700', '-o', 'root', '-g', 'root', ENV_DIR],
    ...input.runtime.installCommands,
    // sshd may have started before the drop-in was written; pick it up now.
    ['systemctl', 'try-reload-or-restart', 'ssh.service'],
    // Caddy and the agent are started by the provisioning `start` step, once the env file exists.
  ];

  return {
    hostname: input.hostname,
    // The host key we generated and pin. Given `ssh_keys`, cloud-init generates no other type
    // (`ssh_genkeytypes: []` would be a schema error), and `ssh_deletekeys` removes any the image had.
    ssh_deletekeys: true,
    ssh_keys: { ed25519_private: input.hostKey.privateKey.reveal(), ed25519_public: input.hostKey.publicKey },
    ssh_pwauth: false,
    disable_root: false,
    // Listing only root keeps cloud-init from creating the distribution's default user.
    users: [{ name: 'root', lock_passwd: true }],
    ssh_authorized_keys: [authorized],
    write_files: files.map((f) => ({
      path: f.path,
      content: f.content,
      owner: 'root:root',
      permissions: f.permissions,
      // Files a package may also ship (Caddyfile) are written after package installation.
      ...(f.path === CADDYFILE_PATH ? { defer: true } : {}),
    })),
    ...(input.installPackages ? { package_update: true, packages } : {}),
    runcmd,
  };
};

/** The `#cloud-config` document, as a Secret: it carries the host's private key (`ssh_keys`). */
export const renderUserData = (config: Record<string, unknown>): Secret =>
  new Secret(`#cloud-config\n${YAML.stringify(config, { lineWidth: 0, blockQuote: 'literal' })}`);
