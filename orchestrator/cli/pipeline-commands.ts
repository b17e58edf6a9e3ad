import { parseArgs } from 'node:util';
import { loadConfig } from '../config';
import type { Deployment, StepRecord } from '../deployments/deployment-store';
import { makePipelineFromConfig, type Pipeline } from '../deployments/pipeline-from-config';
import { runWorkerProcess } from '../deployments/worker-process';
import { OrchestratorError, invalidInput } from '../errors';
import { makeLogger } from '../log';
import { Secret } from '../secret';
import type { CliCommand, CliContext } from './cortexctl';
import { ROTATION_USAGE, rotationSecretCommands } from './rotation-commands';

/**
 * The pipeline's CLI commands: `orgs create`, `secrets add`, `deploy`, `status`, `list`, `retry`,
 * `destroy`, `worker`. Plain-word errors and non-zero exit codes; `--json` for scripts; colour only
 * on a TTY. A secret value is read from standard input or a no-echo prompt, never from argv.
 */
type Flags = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>;

const parse = (args: readonly string[], options: Flags, positionals = 0) => {
  try {
    const r = parseArgs({ args: [...args], options, allowPositionals: positionals > 0, strict: true });
    if (r.positionals.length > positionals)
      throw new Error(`unexpected argument ${r.positionals[positionals]}`);
    return r;
  } catch (err) {
    throw new OrchestratorError(
      'invalid_input',
      (err as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''),
      {
        field: 'argv',
      },
    );
  }
};

const need = (v: string | undefined, flag: string): string => {
  if (v === undefined || v === '') throw invalidInput(flag, 'is required');
  return v;
};

const withPipeline = async <T>(ctx: CliContext, fn: (p: Pipeline) => Promise<T>): Promise<T> => {
  const config = loadConfig({ LOG_LEVEL: 'warn', ...ctx.env });
  const p = await makePipelineFromConfig(config, makeLogger({ level: config.LOG_LEVEL, name: 'cortexctl' }));
  try {
    return await fn(p);
  } finally {
    await p.close(1_000);
  }
};

const tty = (ctx: CliContext): boolean => ctx.isTTY ?? false;
const paint = (ctx: CliContext, code: string, s: string): string =>
  tty(ctx) ? `\x1b[${code}m${s}\x1b[0m` : s;

const stepLine = (ctx: CliContext, s: StepRecord): string => {
  const mark =
    s.status === 'succeeded' || s.status === 'skipped'
      ? paint(ctx, '32', '✓')
      : s.status === 'failed'
        ? paint(ctx, '31', '✗')
        : paint(ctx, '33', '…');
  const took = s.durationMs === null ? '' : ` ${(s.durationMs / 1000).toFixed(1)} s`;
  const extra = s.status === 'skipped' ? ' (already done)' : s.attempt > 1 ? ` (attempt ${s.attempt})` : '';
  const err = s.error ? `: ${s.error}` : '';
  return `  ${mark} ${s.operation === 'deprovision' ? 'teardown ' : ''}${s.step}${took}${extra}${err}\n`;
};

/** Print each step as it starts and ends, until `until`; returns the last state. */
export const followDeployment = async (
  p: Pipeline,
  ctx: CliContext,
  id: string,
  until: (d: Deployment) => boolean,
  timeoutMs = 30 * 60_000,
): Promise<Deployment> => {
  const printed = new Set<string>();
  const t0 = Date.now();
  const d = await p.service.watch(
    id,
    (d) => {
      const run = d.steps.filter((s) => s.run === d.currentRun);
      for (const s of run) {
        const key = `${s.run}/${s.step}/${s.status}/${s.attempt}`;
        if (printed.has(key)) continue;
        printed.add(key);
        ctx.out(stepLine(ctx, s));
      }
    },
    { until, timeoutMs },
  );
  ctx.out(`${d.status} after ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  return d;
};

const readSecretValue = async (ctx: CliContext, prompt: string): Promise<Secret> => {
  if (!ctx.readSecret)
    throw new OrchestratorError('invalid_input', 'no standard input to read the value from');
  const v = (await ctx.readSecret(prompt)).replace(/\r?\n$/, '');
  if (v === '') throw invalidInput('value', 'is empty (pipe it on standard input, or type it at the prompt)');
  return new Secret(v);
};

const json = (ctx: CliContext, v: unknown): void => ctx.out(`${JSON.stringify(v, null, 2)}\n`);

const describe = (ctx: CliContext, d: Deployment): void => {
  ctx.out(
    [
      `deployment ${d.id}  ${paint(ctx, d.status === 'ready' ? '32' : d.status === 'failed' ? '31' : '33', d.status)}`,
      `  name       ${d.name}   org ${d.orgId}`,
      `  address    ${d.dnsName ?? '-'}  ${d.ipv4 ?? ''}`,
      `  runtime    ${d.runtime} on ${d.provider}`,
      d.failedStep ? `  failed at  ${d.failedStep}: ${d.failureReason ?? ''}` : undefined,
      '',
    ]
      .filter((l) => l !== undefined)
      .join('\n'),
  );
  for (const s of d.steps.filter((s) => s.run === d.currentRun)) ctx.out(stepLine(ctx, s));
};

export const pipelineCommands: Record<string, CliCommand> = {
  orgs: {
    summary: 'orgs create <name>: create an organisation (prints its id)',
    async run(args, ctx) {
      const r = parse(args, { json: { type: 'boolean' } }, 2);
      if (r.positionals[0] !== 'create') throw invalidInput('argv', 'usage: cortexctl orgs create <name>');
      const name = need(r.positionals[1], 'name');
      return withPipeline(ctx, async (p) => {
        const org = await p.db.rpc<{ id: string; name: string }>('organizations__create', { p_name: name });
        if (r.values.json) json(ctx, org);
        else ctx.out(`${org.id}\n`);
        return 0;
      });
    },
  },
  secrets: {
    summary: `secrets add --org <id> --name <n> --provider anthropic|openai|other (value on stdin or prompt) | ${ROTATION_USAGE}`,
    async run(args, ctx) {
      const sub = rotationSecretCommands[args[0] ?? ''];
      if (sub) return sub(args.slice(1), ctx);
      const r = parse(
        args,
        {
          org: { type: 'string' },
          name: { type: 'string' },
          provider: { type: 'string' },
          json: { type: 'boolean' },
        },
        1,
      );
      if (r.positionals[0] !== 'add')
        throw invalidInput(
          'argv',
          'usage: cortexctl secrets add --org <id> --name <name> --provider <provider>',
        );
      const orgId = need(r.values.org as string | undefined, '--org');
      const name = need(r.values.name as string | undefined, '--name');
      const provider = need(r.values.provider as string | undefined, '--provider');
      const value = await readSecretValue(ctx, `value for ${name} (not echoed): `);
      return withPipeline(ctx, async (p) => {
        const m = await p.secrets.create({ orgId, name, provider, value }, { actor: 'cortexctl' });
        if (r.values.json) json(ctx, m);
        else ctx.out(`${m.secretId}  ${m.displayPrefix}  fingerprint ${m.fingerprint}\n`);
        return 0;
      });
    },
  },
  deploy: {
    summary: 'deploy --org <id> --name <n> --subdomain <label> [--bind ENV=<secret id>]… [--detach] [--json]',
    async run(args, ctx) {
      const r = parse(args, {
        org: { type: 'string' },
        name: { type: 'string' },
        subdomain: { type: 'string' },
        bind: { type: 'string', multiple: true },
        runtime: { type: 'string' },
        detach: { type: 'boolean' },
        json: { type: 'boolean' },
      });
      const bindings = ((r.values.bind as string[] | undefined) ?? []).map((b, i) => {
        const eq = b.indexOf('=');
        if (eq < 1) throw invalidInput(`--bind[${i}]`, 'must be ENV_NAME=<secret id>');
        return { envVar: b.slice(0, eq), secretId: b.slice(eq + 1) };
      });
      const input = {
        orgId: need(r.values.org as string | undefined, '--org'),
        name: need(r.values.name as string | undefined, '--name'),
        subdomain: need(r.values.subdomain as string | undefined, '--subdomain'),
        ...(r.values.runtime ? { runtime: r.values.runtime as 'echo' } : {}),
        bindings,
      };
      return withPipeline(ctx, async (p) => {
        const res = await p.service.request(input, { actor: 'cortexctl' });
        if (r.values.detach) {
          if (r.values.json) json(ctx, res);
          else ctx.out(`${res.deploymentId}\n`);
          return 0;
        }
        if (!r.values.json) ctx.out(`deployment ${res.deploymentId} requested\n`);
        const d = await followDeployment(
          p,
          r.values.json ? { ...ctx, out: () => undefined } : ctx,
          res.deploymentId,
          (d) => ['ready', 'failed', 'deleted'].includes(d.status),
        );
        if (r.values.json) json(ctx, d);
        else if (d.status === 'ready') ctx.out(`https://${d.dnsName ?? ''}\n`);
        return d.status === 'ready' ? 0 : 1;
      });
    },
  },
  status: {
    summary: 'status <deployment id> [--json]: a deployment and its steps',
    async run(args, ctx) {
      const r = parse(args, { json: { type: 'boolean' } }, 1);
      const id = need(r.positionals[0], 'deployment id');
      return withPipeline(ctx, async (p) => {
        const d = await p.service.get(id);
        if (r.values.json) json(ctx, d);
        else describe(ctx, d);
        return 0;
      });
    },
  },
  list: {
    summary: 'list [--org <id>] [--all] [--json]: deployments, newest first',
    async run(args, ctx) {
      const r = parse(args, { org: { type: 'string' }, all: { type: 'boolean' }, json: { type: 'boolean' } });
      return withPipeline(ctx, async (p) => {
        const rows = await p.service.list({
          ...(r.values.org ? { orgId: r.values.org as string } : {}),
          includeDeleted: Boolean(r.values.all),
        });
        if (r.values.json) json(ctx, rows);
        else
          for (const d of rows)
            ctx.out(`${d.id}  ${d.status.padEnd(14)} ${d.subdomain.padEnd(24)} ${d.ipv4 ?? '-'}\n`);
        return 0;
      });
    },
  },
  retry: {
    summary: 'retry <deployment id> [--detach]: resume a failed deployment at the step that failed',
    async run(args, ctx) {
      const r = parse(args, { detach: { type: 'boolean' } }, 1);
      const id = need(r.positionals[0], 'deployment id');
      return withPipeline(ctx, async (p) => {
        const res = await p.service.retry(id);
        if (r.values.detach) return 0;
        const d = await followDeployment(p, ctx, id, (d) =>
          ['ready', 'failed', 'deleted'].includes(d.status),
        );
        return d.status === 'ready' || d.status === 'deleted' ? 0 : res.status === 'failed' ? 1 : 1;
      });
    },
  },
  destroy: {
    summary:
      'destroy <deployment id> [--detach]: deprovision (DNS, host, the deployment secrets), with progress',
    async run(args, ctx) {
      const r = parse(args, { detach: { type: 'boolean' } }, 1);
      const id = need(r.positionals[0], 'deployment id');
      return withPipeline(ctx, async (p) => {
        await p.service.destroy(id, { actor: 'cortexctl' });
        if (r.values.detach) return 0;
        const d = await followDeployment(p, ctx, id, (d) => d.status === 'deleted');
        return d.status === 'deleted' ? 0 : 1;
      });
    },
  },
  worker: {
    summary: 'run the provision, deprovision and maintenance workers until SIGTERM/SIGINT',
    async run(_args, ctx) {
      const config = loadConfig(ctx.env);
      const log = makeLogger({ level: config.LOG_LEVEL, name: 'cortex-worker' });
      const { stop } = await runWorkerProcess(config, log);
      await new Promise<void>((resolve) => {
        const onSignal = () => void stop().then(resolve);
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
      });
      return 0;
    },
  },
};
