import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../config';
import type { Deployment } from '../deployments/deployment-store';
import { makePipelineFromConfig, type Pipeline } from '../deployments/pipeline-from-config';
import { curlHealthCommand } from '../dns/curl-command';
import { makeDnsQueryFromConfig } from '../dns/dns-wiring';
import { isOrchestratorError, OrchestratorError } from '../errors';
import { makeLogger } from '../log';
import { agentCommands } from '../remote/agent-commands';
import { run } from '../remote/ssh-shell';
import { Secret } from '../secret';
import { httpsGet } from '../steps/https-health';
import { siteNameOf } from '../steps/provision-steps';
import { reasonOf } from '../steps/step-runner';
import { verifyAgentValues } from '../steps/verify-values';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import type { CliContext } from './cortexctl';
import { followDeployment } from './pipeline-commands';

/**
 * `npm run demo`: one local agent end to end, as the onboarding flow would have it. Starts the
 * workers in this process, creates (or reuses) a demo organisation, stores a generated demo key,
 * provisions an agent with live step progress, and shows what an operator would check: the URL, a
 * curl line that works when pasted, what the agent reports (names only), the orchestrator's own
 * check that each value on the host is the vault's (never printed), the audit rows, the time.
 * `npm run demo -- --down` removes everything it made (the organisation row stays: audit rows name it).
 */
interface DemoState {
  orgId?: string;
  secretIds: string[];
  deployments: string[];
}

const stateFile = (stateDir: string): string => path.resolve(stateDir, 'demo', 'state.json');
const loadState = async (stateDir: string): Promise<DemoState> =>
  readFile(stateFile(stateDir), 'utf8').then(
    (t) => JSON.parse(t) as DemoState,
    () => ({ secretIds: [], deployments: [] }),
  );
const saveState = async (stateDir: string, s: DemoState): Promise<void> => {
  await mkdir(path.dirname(stateFile(stateDir)), { recursive: true });
  await writeFile(stateFile(stateDir), `${JSON.stringify(s, null, 2)}\n`);
};

const down = async (p: Pipeline, ctx: CliContext, state: DemoState): Promise<number> => {
  let failed = 0;
  for (const id of state.deployments) {
    const d = await p.service.get(id).catch(() => undefined);
    if (!d || d.status === 'deleted') continue;
    ctx.out(`removing deployment ${id} (${d.subdomain})\n`);
    await p.service.destroy(id);
    const gone = await followDeployment(p, ctx, id, (x) => x.status === 'deleted', 300_000);
    if (gone.status !== 'deleted') failed++;
  }
  for (const s of state.secretIds) await p.secrets.revoke(s, { actor: 'demo' }).catch(() => undefined);
  await rm(path.dirname(stateFile(p.config.CORTEX_STATE_DIR)), { recursive: true, force: true });
  ctx.out(
    failed
      ? `${failed} deployment(s) could not be removed; see npm run cortexctl -- list\n`
      : 'demo removed: agents, DNS records, hosts, the demo key (the organisation row stays; audit rows name it)\n',
  );
  return failed ? 1 : 0;
};

const report = async (p: Pipeline, ctx: CliContext, d: Deployment, t0: number): Promise<void> => {
  const name = siteNameOf(d, p.config.DNS_ZONE);
  const { shell } = await p.access.connect(d);
  try {
    const ca = (await run(shell, agentCommands.caddyRootCertificate(caddyLocalRootCaPath()))).stdout.toString(
      'utf8',
    );
    const caFile = path.resolve(p.config.CORTEX_STATE_DIR, 'demo', `${d.id}-ca.pem`);
    await writeFile(caFile, ca, { mode: 0o644 });
    const query = makeDnsQueryFromConfig(p.config);
    ctx.out(`\nagent      https://${name}\n`);
    if (query) {
      const curl = await curlHealthCommand({ zone: p.config.DNS_ZONE, name, caFile, query });
      ctx.out(`try it     ${curl.line}\n`);
    }
    const health = await httpsGet({ ip: d.ipv4 ?? '', servername: name, path: '/health', ca });
    const names = ((JSON.parse(health.body) as { env?: { name: string }[] }).env ?? []).map((e) => e.name);
    ctx.out(
      `agent says HTTP ${health.status}; variables it sees (names only): ${names.join(', ') || '(none)'}\n`,
    );

    // An audited read, then a one-time-keyed comparison on the host: no value is printed or read back.
    const bound = await p.secrets.readForDeploymentOrThrow(d.id, { actor: 'demo-verify' });
    const checks = await verifyAgentValues(shell, bound);
    for (const b of bound)
      ctx.out(
        `check      ${b.envVar}: ${checks.get(b.envVar) === 'match' ? 'the agent holds the vault value (version ' + String(b.version) + ')' : String(checks.get(b.envVar))}\n`,
      );
  } finally {
    await shell.close();
  }
  ctx.out('\naudit trail of this deployment (no values in it):\n');
  for (const a of await p.store.audit(d.id))
    ctx.out(
      `  ${a.at.replace('T', ' ').slice(0, 23)}  ${a.operation.padEnd(6)} ${a.outcome.padEnd(7)} secret ${a.secretId?.slice(0, 8) ?? '-'} v${a.version ?? '-'}  by ${a.actor ?? '-'}${a.jobId ? ` job ${a.jobId.slice(0, 18)}…` : ''}\n`,
    );
  const verified = await p.secrets.verifyAuditLog(d.orgId);
  ctx.out(
    `audit chain of the organisation: ${verified.ok ? `intact (${verified.rowsChecked} rows)` : 'BROKEN'}\n`,
  );
  ctx.out(
    `\nready in ${((Date.now() - t0) / 1000).toFixed(1)} s. Remove it all with: npm run demo -- --down\n`,
  );
};

export const runDemo = async (args: readonly string[], ctx: CliContext): Promise<number> => {
  const t0 = Date.now();
  const config = loadConfig({ LOG_LEVEL: 'warn', ...ctx.env });
  if (config.HOST_PROVIDER !== 'local')
    throw new OrchestratorError('config_invalid', 'HOST_PROVIDER: the demo runs in local mode (unset it)');
  const p = await makePipelineFromConfig(config, makeLogger({ level: config.LOG_LEVEL, name: 'demo' }));
  const state = await loadState(config.CORTEX_STATE_DIR);
  try {
    if (args.includes('--down')) {
      const w = p.makeWorkerSet();
      w.start(['deprovision']);
      return await down(p, ctx, state);
    }
    if (args.length)
      throw new OrchestratorError('invalid_input', 'usage: npm run demo [-- --down]', { field: 'argv' });
    const w = p.makeWorkerSet();
    w.start(['provision']);
    ctx.out('workers started (in this process: provision)\n');
    if (!state.orgId) {
      const org = await p.db.rpc<{ id: string }>('organizations__create', { p_name: 'demo organisation' });
      state.orgId = org.id;
      await saveState(config.CORTEX_STATE_DIR, state);
    }
    ctx.out(`organisation ${state.orgId}\n`);
    const key = new Secret(`sk-ant-demo-${randomBytes(24).toString('base64url')}`);
    const meta = await p.secrets.create(
      { orgId: state.orgId, name: 'demo Anthropic key', provider: 'anthropic', value: key },
      { actor: 'demo' },
    );
    state.secretIds.push(meta.secretId);
    await saveState(config.CORTEX_STATE_DIR, state);
    ctx.out(
      `demo key   ${meta.secretId}  ${meta.displayPrefix}  fingerprint ${meta.fingerprint.slice(0, 16)}…\n`,
    );

    const subdomain = `demo-${randomBytes(3).toString('hex')}`;
    const req = await p.service.request(
      {
        orgId: state.orgId,
        name: 'demo agent',
        subdomain,
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: meta.secretId }],
      },
      { actor: 'demo' },
    );
    state.deployments.push(req.deploymentId);
    await saveState(config.CORTEX_STATE_DIR, state);
    ctx.out(`deployment ${req.deploymentId} (${subdomain}.${config.DNS_ZONE})\n`);
    const d = await followDeployment(
      p,
      ctx,
      req.deploymentId,
      (x) => ['ready', 'failed', 'deleted'].includes(x.status),
      600_000,
    );
    if (d.status !== 'ready') {
      ctx.out(
        `the deployment is ${d.status}${d.failedStep ? ` at step ${d.failedStep}: ${d.failureReason ?? ''}` : ''}\n` +
          `retry with: npm run cortexctl -- retry ${d.id}   (with a worker running: npm run cortexctl -- worker)\n`,
      );
      return 1;
    }
    await report(p, ctx, d, t0);
    return 0;
  } finally {
    await p.close(2_000);
  }
};

if (require.main === module) {
  runDemo(process.argv.slice(2), {
    env: process.env,
    out: (t) => process.stdout.write(t),
    isTTY: Boolean(process.stdout.isTTY),
  }).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(
        `demo: ${isOrchestratorError(err) || err instanceof Error ? err.message : reasonOf(err)}\n`,
      );
      process.exit(1);
    },
  );
}
