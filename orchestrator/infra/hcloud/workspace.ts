import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  LocalWorkspace,
  type InlineProgramArgs,
  type LocalWorkspaceOptions,
  type Stack,
  type StackSummary,
  type Workspace,
} from '@pulumi/pulumi/automation';
import YAML from 'yaml';
import { PULUMI_PROJECT } from './stack-names';

/**
 * The part of the Automation API the stack runner uses, as a port. Types are picked from the real
 * `Stack` and `Workspace`, so the fake in test/support (which `satisfies` them) stops compiling
 * when the SDK changes a signature.
 */
export type StackHandle = Pick<
  Stack,
  | 'name'
  | 'up'
  | 'destroy'
  | 'cancel'
  | 'outputs'
  | 'setAllConfig'
  | 'info'
  | 'refresh'
  | 'preview'
  | 'exportStack'
  | 'getAllConfig'
>;

export interface WorkspaceFactory {
  /** `LocalWorkspace.createOrSelectStack` with an inline program. */
  createOrSelectStack(args: InlineProgramArgs): Promise<StackHandle>;
  /** `LocalWorkspace.selectStack`: throws `StackNotFoundError` when there is no such stack. */
  selectStack(args: InlineProgramArgs): Promise<StackHandle>;
  listStacks(): Promise<StackSummary[]>;
  removeStack: Workspace['removeStack'];
}

export interface LocalWorkspaceSettings {
  /** `file://…`, `s3://…`, `https://api.pulumi.com`: the CLI reads it from PULUMI_BACKEND_URL. */
  readonly backendUrl: string;
  /** Holds the project file and the stacks' config files; never the repository root. */
  readonly workDir: string;
  /** e.g. `awskms://…`; unset means the backend's default (a passphrase for DIY backends). */
  readonly secretsProvider?: string;
  /** Only PULUMI_CONFIG_PASSPHRASE and HCLOUD_TOKEN: the CLI and the hcloud plugin read them. */
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** The default backend: a folder under the git-ignored state directory. */
export const defaultBackendUrl = (stateDir: string): string =>
  `file://${path.resolve(stateDir, 'pulumi', 'backend')}`;

/**
 * The directory of a `file://` backend as the Pulumi CLI reads it: `file://~` and `file://~/x`
 * are under the home directory (`new URL` would take `~` for a host and drop it), anything else
 * is an absolute file URL.
 */
export const backendDirectory = (url: string, home: string = os.homedir()): string => {
  const rest = url.slice('file://'.length);
  if (rest === '~' || rest.startsWith('~/')) return path.join(home, rest.slice(1));
  return fileURLToPath(url);
};

/** What the CLI and its plugins may see of the worker's environment (besides `settings.env`). */
const CLI_ENV_NAMES = new Set([
  'PATH',
  'HOME',
  'USER',
  'LANG',
  'LC_ALL',
  'TZ',
  'TMPDIR',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'HTTPS_PROXY',
  'HTTP_PROXY',
  'NO_PROXY',
  'https_proxy',
  'http_proxy',
  'no_proxy',
  'PULUMI_HOME',
  'PULUMI_ACCESS_TOKEN',
]);
/** Credentials of the state backend and secrets provider (s3/awskms, gs/gcpkms, azblob/azurekeyvault). */
const CLI_ENV_PREFIXES = ['AWS_', 'GOOGLE_', 'AZURE_'];

/**
 * The environment handed to the Pulumi CLI: the Automation API merges the worker's whole
 * environment (execa's `extendEnv`) into whatever it is given, so every other variable present
 * now is masked as `undefined` (Node's spawn drops those). The CLI and the hcloud plugin then never
 * see the database URL, the service-role key or anything else the worker holds.
 */
export const cliEnvironment = (
  processEnv: Readonly<Record<string, string | undefined>>,
  extra: Readonly<Record<string, string | undefined>>,
): Record<string, string | undefined> => {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(processEnv))
    env[k] = CLI_ENV_NAMES.has(k) || CLI_ENV_PREFIXES.some((p) => k.startsWith(p)) ? v : undefined;
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) env[k] = v;
  return env;
};

/**
 * The real adapter. The project file is written once, atomically, by us: left to LocalWorkspace,
 * every stack selection would rewrite it in place while another worker process on this machine
 * may be reading it.
 */
export const makeLocalWorkspaceFactory = async (
  settings: LocalWorkspaceSettings,
): Promise<WorkspaceFactory> => {
  if (settings.backendUrl.startsWith('file://'))
    await mkdir(backendDirectory(settings.backendUrl), { recursive: true, mode: 0o700 });
  await mkdir(settings.workDir, { recursive: true, mode: 0o700 });
  await writeProjectFile(settings.workDir);

  // Rebuilt for every operation, so a variable set after start-up is masked too.
  const options = (): LocalWorkspaceOptions => ({
    workDir: settings.workDir,
    // Masked entries are `undefined` on purpose (see cliEnvironment); the SDK's type says string.
    envVars: cliEnvironment(process.env, {
      ...settings.env,
      PULUMI_BACKEND_URL: settings.backendUrl,
      PULUMI_SKIP_UPDATE_CHECK: 'true',
    }) as Record<string, string>,
    ...(settings.secretsProvider === undefined ? {} : { secretsProvider: settings.secretsProvider }),
  });
  const workspace = (): Promise<LocalWorkspace> => LocalWorkspace.create(options());
  return {
    createOrSelectStack: (args) => LocalWorkspace.createOrSelectStack(args, options()),
    selectStack: (args) => LocalWorkspace.selectStack(args, options()),
    listStacks: async () => (await workspace()).listStacks(),
    removeStack: async (stackName, opts) => (await workspace()).removeStack(stackName, opts),
  };
};

const writeProjectFile = async (workDir: string): Promise<void> => {
  const file = path.join(workDir, 'Pulumi.yaml');
  const text = YAML.stringify({
    name: PULUMI_PROJECT,
    runtime: 'nodejs',
    description: 'cortex agent servers (inline)',
  });
  const current = await readFile(file, 'utf8').catch(() => undefined);
  if (current === text) return;
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, file);
};
