import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
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
 * The real adapter. The project file is written once, atomically, by us: left to LocalWorkspace,
 * every stack selection would rewrite it in place while another worker process on this machine
 * may be reading it.
 */
export const makeLocalWorkspaceFactory = async (
  settings: LocalWorkspaceSettings,
): Promise<WorkspaceFactory> => {
  if (settings.backendUrl.startsWith('file://'))
    await mkdir(new URL(settings.backendUrl).pathname, { recursive: true, mode: 0o700 });
  await mkdir(settings.workDir, { recursive: true, mode: 0o700 });
  await writeProjectFile(settings.workDir);

  const envVars: Record<string, string> = {
    PULUMI_BACKEND_URL: settings.backendUrl,
    PULUMI_SKIP_UPDATE_CHECK: 'true',
  };
  for (const [k, v] of Object.entries(settings.env)) if (v !== undefined) envVars[k] = v;
  const options: LocalWorkspaceOptions = {
    workDir: settings.workDir,
    envVars,
    ...(settings.secretsProvider === undefined ? {} : { secretsProvider: settings.secretsProvider }),
  };
  const workspace = (): Promise<LocalWorkspace> => LocalWorkspace.create(options);
  return {
    createOrSelectStack: (args) => LocalWorkspace.createOrSelectStack(args, options),
    selectStack: (args) => LocalWorkspace.selectStack(args, options),
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
