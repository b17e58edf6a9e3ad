import * as pulumi from '@pulumi/pulumi';
import {
  CommandError,
  type ConfigMap,
  type Deployment,
  type DestroyOptions,
  type DestroyResult,
  type InlineProgramArgs,
  type EngineEvent,
  type OpType,
  type OutputMap,
  type PreviewOptions,
  type PreviewResult,
  type PulumiFn,
  type RefreshOptions,
  type RefreshResult,
  type StackSummary,
  type UpdateSummary,
  type UpOptions,
  type UpResult,
} from '@pulumi/pulumi/automation';
import * as automationCmd from '@pulumi/pulumi/automation/cmd';
import * as automationErrors from '@pulumi/pulumi/automation/errors';
import type { MockResourceArgs } from '@pulumi/pulumi/runtime';
import type { StackHandle, WorkspaceFactory } from '../../orchestrator/infra/hcloud';

/**
 * An in-memory Pulumi backend behind the Automation API's contract: stacks are selected or
 * created, hold config and outputs, run their inline program (under `pulumi.runtime.setMocks`) on
 * `up`, keep history, honour locks, and fail with the SDK's own error classes, built by the SDK's
 * own `createCommandError` from CLI-shaped stderr — so `instanceof ConcurrentUpdateError` and
 * friends behave as they do against the real CLI.
 */

// The SDK builds its errors from a CommandResult with `createCommandError` (both @internal, so
// absent from the .d.ts). Reaching them here keeps the class chosen from stderr the SDK's choice.
type CommandResultLike = { stdout: string; stderr: string; code: number; err?: Error };
const internals = {
  CommandResult: (
    automationCmd as unknown as {
      CommandResult?: new (o: string, e: string, c: number, err?: Error) => object;
    }
  ).CommandResult,
  createCommandError: (automationErrors as unknown as { createCommandError?: (r: object) => CommandError })
    .createCommandError,
};
if (typeof internals.CommandResult !== 'function' || typeof internals.createCommandError !== 'function')
  throw new Error(
    '@pulumi/pulumi no longer exports CommandResult/createCommandError: update the fake workspace',
  );

// Resources register asynchronously: `waitForRPCs` (@internal, what `disconnect` awaits) settles
// the runtime's RPC queue, so what a program declared is all recorded, whether it returned or threw.
const waitForRPCs = (pulumi.runtime as unknown as { waitForRPCs?: () => Promise<void> }).waitForRPCs;
if (typeof waitForRPCs !== 'function')
  throw new Error('@pulumi/pulumi no longer exports runtime.waitForRPCs: update the fake workspace');
interface RegisterRequest {
  getType(): string;
  getName(): string;
  getDeletebeforereplace(): boolean;
  getIgnorechangesList(): string[];
}
const getMonitor = (pulumi.runtime as unknown as { getMonitor?: () => unknown }).getMonitor;
if (typeof getMonitor !== 'function')
  throw new Error('@pulumi/pulumi no longer exports runtime.getMonitor: update the fake workspace');

/** Every registration the program started has reached the mocks. */
export const settleRuntime = (): Promise<void> => waitForRPCs();

/** An error exactly as the SDK throws it when the CLI exits non-zero with this stderr. */
export const commandError = ({
  stdout = '',
  stderr,
  code = 255,
  err,
}: Partial<CommandResultLike> & { stderr: string }) =>
  internals.createCommandError!(new internals.CommandResult!(stdout, stderr, code, err));

/** The DIY backend's message for a locked stack (pkg/backend/diy/lock.go). */
export const diyLockedStderr = (stack: string, at: Date, by = 'root@worker-2 (pid 4242)'): string =>
  'error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.\n' +
  `  file:///var/lib/cortex/pulumi/backend/.pulumi/locks/organization/cortex/${stack}/0b9e1c52.json: created by ${by} at ${at.toISOString().replace(/\.\d{3}Z$/, 'Z')}`;

export const CLOUD_CONFLICT_STDERR = 'error: [409] Conflict: Another update is currently in progress.';

/** The resource options the engine receives with a registration (read from the RPC request). */
export interface RegisteredOptions {
  readonly deleteBeforeReplace: boolean;
  readonly ignoreChanges: readonly string[];
}

/** A resource as the engine received it (inputs with secrets still marked), and the id it got. */
export type RegisteredResource = MockResourceArgs & {
  readonly assignedId: string;
  readonly options?: RegisteredOptions;
};

export interface ProgramRun {
  readonly outputs: OutputMap;
  readonly resources: readonly RegisteredResource[];
}

/** How a stack's program is "deployed". The default runs it for real under Pulumi's mocks. */
export type Engine = (
  program: PulumiFn,
  ctx: { project: string; stack: string; config: ConfigMap; previous: readonly RegisteredResource[] },
) => Promise<ProgramRun>;

export interface MockAddresses {
  readonly ipv4: string;
  readonly ipv6: string;
}

let nextId = 4_200_000;

/**
 * Runs a Pulumi program under `setMocks` with the given stack config: servers get `addresses`,
 * every resource a numeric id (as Hetzner's are). Returns the outputs with their secret flags.
 */
export const runProgramWithMocks = async (
  program: PulumiFn,
  ctx: {
    project: string;
    stack: string;
    config: ConfigMap;
    addresses?: MockAddresses;
    /** Resources of the last deployment: one with the same type and name keeps its id, as an update does. */
    previous?: readonly RegisteredResource[];
    /** Registered resources are pushed here too: readable when the program throws. */
    registered?: RegisteredResource[];
  },
): Promise<ProgramRun> => {
  const resources: RegisteredResource[] = ctx.registered ?? [];
  const addresses = ctx.addresses ?? { ipv4: '203.0.113.10', ipv6: '2001:db8::1' };
  const options = new Map<string, RegisteredOptions>();
  await pulumi.runtime.setMocks(
    {
      newResource: (args) => {
        const before = ctx.previous?.find((r) => r.type === args.type && r.name === args.name);
        // A changed ForceNew input replaces the resource: the replacement gets a new id.
        // Inputs under the program's own `ignoreChanges` keep their old value, so never replace.
        const ignored = options.get(`${args.type}::${args.name}`)?.ignoreChanges ?? [];
        const replaced =
          before !== undefined &&
          (FORCE_NEW[args.type] ?? []).some(
            (k) =>
              !ignored.includes(k) &&
              JSON.stringify((before.inputs as Record<string, unknown>)[k]) !==
                JSON.stringify((args.inputs as Record<string, unknown>)[k]),
          );
        const assignedId = before && !replaced ? before.assignedId : String(nextId++);
        const opts = options.get(`${args.type}::${args.name}`);
        resources.push({ ...args, assignedId, ...(opts ? { options: opts } : {}) });
        const extra: Record<string, unknown> =
          args.type === 'hcloud:index/server:Server'
            ? { ipv4Address: addresses.ipv4, ipv6Address: addresses.ipv6, status: 'running' }
            : args.type === 'hcloud:index/sshKey:SshKey'
              ? { fingerprint: 'aa:bb:cc:dd' }
              : {};
        return { id: assignedId, state: { ...args.inputs, ...extra } };
      },
      call: (args) => args.inputs as Record<string, unknown>,
    },
    ctx.project,
    ctx.stack,
    false,
  );
  // The mocks see no resource options; the monitor's request carries them.
  const monitor = getMonitor() as {
    registerResource: (req: RegisterRequest, cb: unknown) => unknown;
  };
  const register = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req, cb) => {
    options.set(`${req.getType()}::${req.getName()}`, {
      deleteBeforeReplace: req.getDeletebeforereplace(),
      ignoreChanges: req.getIgnorechangesList(),
    });
    return register(req, cb);
  };
  const plain: Record<string, string> = {};
  for (const [k, v] of Object.entries(ctx.config)) plain[k] = v.value;
  pulumi.runtime.setAllConfig(
    plain,
    Object.entries(ctx.config)
      .filter(([, v]) => v.secret === true)
      .map(([k]) => k),
  );
  let exported: Record<string, unknown>;
  try {
    exported = ((await program()) ?? {}) as Record<string, unknown>;
  } finally {
    await settleRuntime();
  }
  const outputs: OutputMap = {};
  for (const [name, value] of Object.entries(exported)) {
    const out: pulumi.Output<unknown> = pulumi.output(value as pulumi.Input<unknown>);
    outputs[name] = {
      value: await new Promise((resolve) => out.apply(resolve)),
      secret: await pulumi.isSecret(out),
    };
  }
  await settleRuntime();
  return { outputs, resources };
};

/**
 * An operation the engine started and never saw finish, as the checkpoint's `pending_operations`
 * records it: for a create, the resource may exist at the provider while the state lacks it.
 */
export interface PendingOperation {
  readonly type: 'creating' | 'updating' | 'deleting';
  readonly resource: { readonly urn: string; readonly type: string; readonly name: string };
}

/**
 * What happens at the cloud provider when the engine creates, updates or deletes a resource (see
 * test/support/fake-hcloud-api.ts). Each returns `undefined` on success, or the CLI's stderr when
 * the provider refuses: the operation then fails there, as `pulumi up`/`destroy` does — what was
 * done before stays in the state, what was not is not.
 */
export interface ProviderModel {
  create(r: RegisteredResource): string | undefined;
  update(before: RegisteredResource, after: RegisteredResource): string | undefined;
  delete(r: RegisteredResource): string | undefined;
  /** Whether the resource still exists (what `pulumi refresh` asks). */
  exists(r: RegisteredResource): boolean;
}

interface StackRecord {
  config: ConfigMap;
  outputs: OutputMap;
  resources: readonly RegisteredResource[];
  /** `deployment.pending_operations` of the stack's checkpoint. */
  pendingOperations: PendingOperation[];
  history: UpdateSummary[];
  lock?: { at: Date; flavor: 'diy' | 'cloud' };
}

/** How a real `pulumi up` ends part-way (see `failPartwayNext`). */
export interface PartwayFailure {
  /** Resources of this update that were created before the failure: they are in the state. */
  readonly completed: number;
  /** Creates in flight when the CLI died: recorded as pending operations, absent from the state. */
  readonly pending: number;
  /** The CLI's stderr; default: a provider error on the first resource that did not complete. */
  readonly stderr?: string;
  /**
   * With a provider model: the in-flight creates were accepted by the provider before the CLI died
   * (the `POST /servers` went through), so the resources exist there, untracked.
   */
  readonly reachedProvider?: boolean;
}

/**
 * Inputs whose change makes the hcloud provider replace the resource, as read in
 * terraform-provider-hcloud v1.66.1 (cd9db19f; `ForceNew: true` in the SDKv2 schemas,
 * `RequiresReplace()` in the plugin-framework ones) and unchanged at v1.68.0+5 (f81c9af4) except
 * that `datacenter` is gone there: docs/infrastructure.md, "Verified against the provider's source".
 * Any other changed input is an update in place (a changed `serverType` is a resize: power off,
 * change type). `hcloud.Firewall` has no ForceNew input at all.
 */
export const FORCE_NEW: Record<string, readonly string[]> = {
  'hcloud:index/sshKey:SshKey': ['publicKey'],
  'hcloud:index/server:Server': ['location', 'image', 'datacenter', 'userData', 'sshKeys'],
  'hcloud:index/firewallAttachment:FirewallAttachment': ['firewallId'],
  'hcloud:index/primaryIp:PrimaryIp': ['type', 'location', 'datacenter'],
  'hcloud:index/zoneRrset:ZoneRrset': ['zone', 'name', 'type'],
};

const urnOf = (project: string, stack: string, r: { type: string; name: string }): string =>
  `urn:pulumi:${stack}::${project}::${r.type}::${r.name}`;

/** What the CLI prints before an update of a stack whose last update left pending operations. */
export const pendingOperationsWarning = (ops: readonly PendingOperation[]): string =>
  `warning: Attempting to deploy or update resources with ${ops.length} pending operations from previous deployment.\n` +
  ops.map((o) => `  * ${o.resource.urn}, interrupted while ${o.type}\n`).join('') +
  'These resources are in an unknown state because the Pulumi CLI was interrupted while waiting for changes to these resources to complete. You should confirm whether or not the operations listed completed successfully by checking the state of the appropriate provider.\n';

type Op =
  | 'select'
  | 'create'
  | 'up'
  | 'destroy'
  | 'remove'
  | 'cancel'
  | 'outputs'
  | 'config'
  | 'list'
  | 'refresh'
  | 'preview'
  | 'export';

export interface FakeWorkspace {
  readonly workspace: WorkspaceFactory;
  readonly stacks: Map<string, StackRecord>;
  /** Every CLI invocation the real SDK would have made, as its argv (config values included). */
  readonly commandLines: string[][];
  /** Highest number of up/destroy operations that ran at the same time. */
  readonly maxConcurrent: () => number;
  /** The next `op` (on `stack`, if given) fails as the CLI would with this stderr. */
  failNext(op: Op, stderr: string, stack?: string): void;
  /**
   * The next `up` fails part-way, as a real one does: the program runs, the first `completed` of
   * its new resources reach the state, the next `pending` are recorded as pending creates, the
   * outputs stay those of the last successful update, and the update is recorded as failed. The
   * following `up` warns about the pending operations and clears them (the CLI proceeds since
   * 3.33); a resource whose create was pending is then created again, under a new id.
   */
  failPartwayNext(f: PartwayFailure): void;
  /** Someone else holds the stack's lock since `at`. */
  lock(stack: string, at: Date, flavor?: 'diy' | 'cloud'): void;
  /** The next up/destroy prints this to stdout (in chunks) before finishing. */
  printNext(text: string): void;
  /**
   * The next up/destroy runs until its signal aborts; with `ignoreSignal`, forever. Like the SDK,
   * it listens for `abort` only once the CLI runs: a signal aborted earlier is never seen.
   * Resolves when the operation starts hanging.
   */
  hangNext(opts?: { ignoreSignal?: boolean; leaveLock?: boolean }): Promise<void>;
}

export const makeFakeWorkspace = (
  opts: { engine?: Engine; project?: string; now?: () => Date; provider?: ProviderModel } = {},
): FakeWorkspace => {
  const model = opts.provider;
  const project = opts.project ?? 'cortex';
  const now = opts.now ?? (() => new Date());
  const engine: Engine = opts.engine ?? ((program, ctx) => runProgramWithMocks(program, ctx));
  const stacks = new Map<string, StackRecord>();
  const commandLines: string[][] = [];
  const faults: { op: Op; stderr: string; stack?: string }[] = [];
  let printed: string | undefined;
  let partway: PartwayFailure | undefined;
  let hang: { ignoreSignal?: boolean; leaveLock?: boolean; started: () => void } | undefined;
  let running = 0;
  let maxRunning = 0;

  /** Records the CLI call; `first` (a lock check) fails before any injected fault. */
  const run = (op: Op, stack: string | undefined, argv: string[], first?: () => void): void => {
    commandLines.push(['pulumi', ...argv, '--non-interactive']);
    first?.();
    const i = faults.findIndex((f) => f.op === op && (f.stack === undefined || f.stack === stack));
    if (i >= 0) {
      const [fault] = faults.splice(i, 1);
      throw commandError({ stderr: fault!.stderr });
    }
  };
  const notFound = (name: string): CommandError =>
    commandError({ stderr: `error: no stack named '${name}' found` });
  const get = (name: string): StackRecord => {
    const record = stacks.get(name);
    if (!record) throw notFound(name);
    return record;
  };
  const checkLock = (name: string, record: StackRecord): void => {
    if (record.lock)
      throw commandError({
        stderr: record.lock.flavor === 'diy' ? diyLockedStderr(name, record.lock.at) : CLOUD_CONFLICT_STDERR,
      });
  };
  const summary = (
    kind: 'update' | 'destroy',
    record: StackRecord,
    startTime: Date,
    result: UpdateSummary['result'],
  ) =>
    ({
      kind,
      startTime,
      endTime: now(),
      message: '',
      environment: { 'exec.kind': 'auto.inline' },
      config: record.config,
      result,
      version: record.history.length + 1,
      resourceChanges: { create: record.resources.length },
    }) satisfies UpdateSummary;

  /** The shared part of up and destroy: lock, concurrency accounting, printing, hanging. */
  const operate = async <T>(
    name: string,
    o: { signal?: AbortSignal; onOutput?: (out: string) => void },
    body: (record: StackRecord) => Promise<T>,
  ): Promise<T> => {
    const record = get(name);
    running++;
    maxRunning = Math.max(maxRunning, running);
    try {
      const warning =
        record.pendingOperations.length > 0 ? pendingOperationsWarning(record.pendingOperations) : '';
      const text = warning + (printed ?? `Updating (${name})\n`);
      printed = undefined;
      // Chunks cut mid-line, as a pipe delivers them.
      for (let i = 0; i < text.length; i += 7) o.onOutput?.(text.slice(i, i + 7));
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (hang) {
        const h = hang;
        hang = undefined;
        if (h.leaveLock) record.lock = { at: now(), flavor: 'diy' };
        await new Promise<void>((resolve) => {
          if (!h.ignoreSignal) o.signal?.addEventListener('abort', () => resolve(), { once: true });
          h.started();
        });
        // SIGINT makes the CLI cancel and exit non-zero.
        throw commandError({ stderr: 'error: update canceled', code: 255 });
      }
      return await body(record);
    } finally {
      running--;
    }
  };

  const handle = (name: string, program: PulumiFn): StackHandle =>
    ({
      name,
      async up(o?: UpOptions): Promise<UpResult> {
        run('up', name, ['up', '--yes', '--skip-preview', '--stack', name], () => checkLock(name, get(name)));
        const failure = partway;
        partway = undefined;
        return operate(name, o ?? {}, async (record) => {
          const started = now();
          // The CLI proceeds past pending operations; a create that was pending is started afresh.
          record.pendingOperations = [];
          const deployed = await engine(o?.program ?? program, {
            project,
            stack: name,
            config: record.config,
            previous: record.resources,
          });
          const known = (r: RegisteredResource) =>
            record.resources.some((p) => p.type === r.type && p.name === r.name);
          if (failure) {
            const fresh = deployed.resources.filter((r) => !known(r));
            const done = fresh.slice(0, failure.completed);
            const inFlight = fresh.slice(failure.completed, failure.completed + failure.pending);
            for (const r of [...done, ...(failure.reachedProvider ? inFlight : [])]) model?.create(r);
            record.resources = [...record.resources, ...done];
            record.pendingOperations = inFlight.map((r) => ({
              type: 'creating',
              resource: { urn: urnOf(project, name, r), type: r.type, name: r.name },
            }));
            record.history.unshift(summary('update', record, started, 'failed'));
            const failed = fresh[failure.completed];
            throw commandError({
              stderr:
                failure.stderr ??
                `error: update failed\n  ${failed ? urnOf(project, name, failed) : name}: error: creating failed: the provider returned an error`,
            });
          }
          if (model) applyThroughModel(model, name, record, deployed.resources, started);
          record.outputs = deployed.outputs;
          record.resources = deployed.resources;
          const s = summary('update', record, started, 'succeeded');
          record.history.unshift(s);
          return {
            stdout: `Updating (${name})`,
            stderr: '',
            outputs: record.outputs,
            summary: s,
          } satisfies UpResult;
        });
      },
      async destroy(o?: DestroyOptions): Promise<DestroyResult> {
        run('destroy', name, ['destroy', '--yes', '--skip-preview', '--stack', name], () =>
          checkLock(name, get(name)),
        );
        const result = await operate(name, o ?? {}, async (record) => {
          const started = now();
          if (model) {
            // Dependents first, as the engine deletes them.
            for (const r of [...record.resources].reverse()) {
              const refused = model.delete(r);
              if (refused) {
                record.history.unshift(summary('destroy', record, started, 'failed'));
                throw commandError({
                  stderr: `error: update failed\n  ${urnOf(project, name, r)}: ${refused}`,
                });
              }
              record.resources = record.resources.filter((x) => x !== r);
            }
          }
          record.outputs = {};
          record.resources = [];
          const s = summary('destroy', record, started, 'succeeded');
          record.history.unshift(s);
          return { stdout: `Destroying (${name})`, stderr: '', summary: s } satisfies DestroyResult;
        });
        if (o?.remove) await removeStack(name);
        return result;
      },
      async preview(o?: PreviewOptions): Promise<PreviewResult> {
        run('preview', name, ['preview', '--stack', name]);
        const record = get(name);
        checkLock(name, record);
        // The program runs as in `up`; nothing is applied. One event per step, as the CLI's event log.
        const planned = await engine(o?.program ?? program, {
          project,
          stack: name,
          config: record.config,
          previous: record.resources,
        });
        const counts: Partial<Record<OpType, number>> = {};
        let sequence = 0;
        const emit = (r: RegisteredResource, op: OpType, diffs: string[], keys: string[]): void => {
          counts[op] = (counts[op] ?? 0) + 1;
          o?.onEvent?.({
            sequence: sequence++,
            timestamp: Math.floor(now().getTime() / 1000),
            resourcePreEvent: {
              metadata: { op, urn: urnOf(project, name, r), type: r.type, diffs, keys, provider: '' },
              planning: true,
            },
          } satisfies EngineEvent);
        };
        for (const r of planned.resources) {
          const before = record.resources.find((p) => p.type === r.type && p.name === r.name);
          if (!before) {
            emit(r, 'create', [], []);
            continue;
          }
          const a = before.inputs as Record<string, unknown>;
          const b = r.inputs as Record<string, unknown>;
          const diffs = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter(
            (k) =>
              !(r.options?.ignoreChanges ?? []).includes(k) && JSON.stringify(a[k]) !== JSON.stringify(b[k]),
          );
          const keys = diffs.filter((k) => (FORCE_NEW[r.type] ?? []).includes(k));
          emit(r, keys.length > 0 ? 'replace' : diffs.length > 0 ? 'update' : 'same', diffs, keys);
        }
        for (const r of record.resources)
          if (!planned.resources.some((p) => p.type === r.type && p.name === r.name))
            emit(r, 'delete', [], []);
        return { stdout: `Previewing update (${name})`, stderr: '', changeSummary: counts };
      },
      async refresh(o?: RefreshOptions): Promise<RefreshResult> {
        run('refresh', name, [
          'refresh',
          '--yes',
          '--skip-preview',
          ...(o?.clearPendingCreates ? ['--clear-pending-creates'] : []),
          '--stack',
          name,
        ]);
        const record = get(name);
        checkLock(name, record);
        const started = now();
        // Resources the provider no longer has leave the state; pending creates are dropped when asked.
        if (model) record.resources = record.resources.filter((r) => model.exists(r));
        if (o?.clearPendingCreates)
          record.pendingOperations = record.pendingOperations.filter((p) => p.type !== 'creating');
        const s = { ...summary('update', record, started, 'succeeded'), kind: 'refresh' as const };
        record.history.unshift(s);
        return { stdout: `Refreshing (${name})`, stderr: '', summary: s } satisfies RefreshResult;
      },
      async exportStack(): Promise<Deployment> {
        run('export', name, ['stack', 'export', '--stack', name]);
        const record = get(name);
        return {
          version: 3,
          deployment: {
            resources: record.resources.map((r) => ({
              urn: urnOf(project, name, r),
              type: r.type,
              id: r.assignedId,
            })),
            pending_operations: record.pendingOperations.map((p) => ({ type: p.type, resource: p.resource })),
          },
        };
      },
      async getAllConfig(): Promise<ConfigMap> {
        return { ...get(name).config };
      },
      async cancel(): Promise<void> {
        run('cancel', name, ['cancel', '--yes', '--stack', name]);
        // The DIY backend deletes every lock file of the stack; no lock is not an error.
        const record = get(name);
        delete record.lock;
      },
      async outputs(): Promise<OutputMap> {
        run('outputs', name, ['stack', 'output', '--json', '--show-secrets', '--stack', name]);
        return { ...get(name).outputs };
      },
      async setAllConfig(config: ConfigMap, path?: boolean): Promise<void> {
        // As LocalWorkspace.setAllConfig: every value becomes a command-line argument.
        const argv = ['config', 'set-all', '--stack', name, ...(path ? ['--path'] : [])];
        for (const [k, v] of Object.entries(config))
          argv.push(v.secret ? '--secret' : '--plaintext', `${k}=${v.value}`);
        run('config', name, argv);
        const record = get(name);
        record.config = { ...record.config, ...config };
      },
      async info(): Promise<UpdateSummary | undefined> {
        const record = get(name);
        if (record.lock?.flavor === 'cloud')
          return { ...summary('update', record, record.lock.at, 'in-progress'), endTime: record.lock.at };
        return record.history[0];
      },
    }) satisfies StackHandle;

  /** Creates, updates and deletes of a successful `up`, through the provider; a refusal fails it there. */
  const applyThroughModel = (
    model: ProviderModel,
    stack: string,
    record: StackRecord,
    next: readonly RegisteredResource[],
    started: Date,
  ): void => {
    const same = (a: RegisteredResource, b: RegisteredResource) => a.type === b.type && a.name === b.name;
    const fail = (r: RegisteredResource, stderr: string): never => {
      record.history.unshift(summary('update', record, started, 'failed'));
      throw commandError({ stderr: `error: update failed\n  ${urnOf(project, stack, r)}: ${stderr}` });
    };
    for (const r of next) {
      const before = record.resources.find((p) => same(p, r));
      if (before && before.assignedId !== r.assignedId) {
        // A replacement: create-before-delete unless the resource asks otherwise, as the engine does.
        const steps = r.options?.deleteBeforeReplace
          ? [() => model.delete(before), () => model.create(r)]
          : [() => model.create(r), () => model.delete(before)];
        for (const step of steps) {
          const refused = step();
          if (refused) fail(r, refused);
        }
        record.resources = record.resources.map((x) => (x === before ? r : x));
        continue;
      }
      const refused = before ? model.update(before, r) : model.create(r);
      if (refused) fail(r, refused);
      if (!before) record.resources = [...record.resources, r];
    }
    for (const r of [...record.resources].reverse())
      if (!next.some((n) => same(n, r))) {
        const refused = model.delete(r);
        if (refused) fail(r, refused);
        record.resources = record.resources.filter((x) => x !== r);
      }
  };

  const removeStack = async (name: string): Promise<void> => {
    run('remove', name, ['stack', 'rm', '--yes', name]);
    const record = get(name);
    if (record.resources.length > 0)
      throw commandError({
        stderr: `error: '${name}' still has resources; removal rejected. Possible actions:\n- Make sure that '${name}' is the stack that you want to destroy\n- Run \`pulumi destroy\` to delete the resources, then run \`pulumi stack rm\`\n- Run \`pulumi stack rm --force\` to override this error`,
      });
    stacks.delete(name);
  };

  const workspace = {
    async createOrSelectStack(args: InlineProgramArgs) {
      run('select', args.stackName, ['stack', 'select', '--create', '--stack', args.stackName]);
      if (!stacks.has(args.stackName)) {
        run('create', args.stackName, ['stack', 'init', args.stackName]);
        stacks.set(args.stackName, {
          config: {},
          outputs: {},
          resources: [],
          pendingOperations: [],
          history: [],
        });
      }
      return handle(args.stackName, args.program);
    },
    async selectStack(args: InlineProgramArgs) {
      run('select', args.stackName, ['stack', 'select', '--stack', args.stackName]);
      get(args.stackName);
      return handle(args.stackName, args.program);
    },
    async listStacks(): Promise<StackSummary[]> {
      run('list', undefined, ['stack', 'ls', '--json']);
      return [...stacks.entries()].map(([name, r]) => ({
        name,
        current: false,
        updateInProgress: r.lock !== undefined,
        resourceCount: r.resources.length,
      }));
    },
    removeStack,
  } satisfies WorkspaceFactory;

  return {
    workspace,
    stacks,
    commandLines,
    maxConcurrent: () => maxRunning,
    failNext: (op, stderr, stack) =>
      void faults.push({ op, stderr, ...(stack === undefined ? {} : { stack }) }),
    failPartwayNext: (f) => void (partway = f),
    lock: (stack, at, flavor = 'diy') => {
      get(stack).lock = { at, flavor };
    },
    printNext: (text) => void (printed = text),
    hangNext: (o = {}) => new Promise<void>((started) => void (hang = { ...o, started })),
  };
};
