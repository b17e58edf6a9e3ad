import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTokenStore } from '../api/api-tokens';
import { makeApiClient, type ApiClient } from '../api/client';
import { loadConfig } from '../config';
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
import {
  ensureDemoApi,
  followViaApi,
  stopDemoApi,
  writeTokenHeaderFile,
  type ApiDeployment,
  demoDir,
} from './demo-api';
import { followDeployment } from './pipeline-commands';

/**
 * `npm run demo`: one local agent end to end, exactly as the onboarding flow would have it: over
 * HTTP. Starts the workers in this process and the API (`cortexctl api`) as a detached child,
 * creates (or reuses) a demo organisation and a token for it (in a 0600 curl header file, never
 * printed), then through the typed client stores a generated demo key, requests the deployment
 * (with an Idempotency-Key) and follows it step by step; then shows what an operator would check:
 * the URL, a curl line that works when pasted, what the agent reports (names only), the
 * orchestrator's own check that each value on the host is the vault's (never printed), the audit
 * trail as the API serves it, and curl lines to follow the events and read the trail.
 * `npm run demo -- --down` deletes the deployments through the API, revokes the key and the token,
 * and stops the API (the organisation row stays: audit rows name it).
 */
interface DemoState {
  orgId?: string;
  secretIds: string[];
  deployments: string[];
  /** The demo's API process (detached, so that the printed curl lines keep working). */
  api?: { pid: number; url: string };
  /** The demo token's id (its plaintext is only in the 0600 header file). */
  tokenId?: string;
}

const DEMO_SCOPES = ['secrets:write', 'deployments:write', 'deployments:read', 'audit:read'] as const;

const stateFile = (dir: string): string => path.join(dir, 'state.json');
const loadState = async (dir: string): Promise<DemoState> =>
  readFile(stateFile(dir), 'utf8').then(
    (t) => JSON.parse(t) as DemoState,
    () => ({ secretIds: [], deployments: [] }),
  );
const saveState = async (dir: string, s: DemoState): Promise<void> => {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(stateFile(dir), `${JSON.stringify(s, null, 2)}\n`);
};

const down = async (p: Pipeline, ctx: CliContext, state: DemoState): Promise<number> => {
  let failed = 0;
  const tokens = makeTokenStore({ rpc: p.db.rpc });
  // Through the API when the demo's API still runs (a short-lived token for this alone); directly
  // through the service when it does not.
  const apiUp = state.api
    ? await fetch(`${state.api.url}/healthz`).then(
        (r) => r.ok,
        () => false,
      )
    : false;
  const temp =
    apiUp && state.orgId
      ? await tokens
          .create(
            { orgId: state.orgId, name: 'demo --down', scopes: ['deployments:write', 'deployments:read'] },
            'demo',
          )
          .catch((err: unknown) => {
            // The organisation is not in this database (reset): down goes through the service.
            if (isOrchestratorError(err) && err.code === 'not_found') return undefined;
            throw err;
          })
      : undefined;
  const api =
    temp && state.api
      ? makeApiClient({ baseUrl: state.api.url, token: temp.token, userAgent: 'cortex-demo' })
      : undefined;
  try {
    for (const id of state.deployments) {
      const d = await p.service.get(id).catch(() => undefined);
      if (!d || d.status === 'deleted') continue;
      ctx.out(`removing deployment ${id} (${d.subdomain})${api ? ': DELETE /v1/deployments/{id}' : ''}\n`);
      if (api) {
        const r = await api.DELETE('/v1/deployments/{id}', { params: { path: { id } } });
        if (r.response.status !== 202)
          throw new Error(`DELETE /v1/deployments/${id} answered ${r.response.status}`);
      } else await p.service.destroy(id);
      const gone = await followDeployment(p, ctx, id, (x) => x.status === 'deleted', 300_000);
      if (gone.status !== 'deleted') failed++;
    }
  } finally {
    if (temp) await tokens.revoke(temp.id, 'demo').catch(() => undefined);
  }
  for (const s of state.secretIds) await p.secrets.revokeNow(s, { actor: 'demo' }).catch(() => undefined);
  if (state.tokenId) await tokens.revoke(state.tokenId, 'demo').catch(() => undefined);
  if (await stopDemoApi(state.api?.pid)) ctx.out(`stopped the demo's API (pid ${state.api?.pid})\n`);
  await rm(demoDir(p.config), { recursive: true, force: true });
  ctx.out(
    failed
      ? `${failed} deployment(s) could not be removed; see npm run cortexctl -- list\n`
      : 'demo removed: agents, DNS records, hosts, the demo key, the demo token (revoked), the API (the organisation row stays; audit rows name it)\n',
  );
  return failed ? 1 : 0;
};

const report = async (
  p: Pipeline,
  ctx: CliContext,
  d: ApiDeployment,
  t0: number,
  api: ApiClient,
  follow: { url: string; headerFile: string },
): Promise<void> => {
  const name = siteNameOf(d, p.config.DNS_ZONE);
  // The operator's own checks below go to the host over SSH (the API never touches a host).
  const { shell } = await p.access.connect(await p.store.get(d.id));
  try {
    const ca = (await run(shell, agentCommands.caddyRootCertificate(caddyLocalRootCaPath()))).stdout.toString(
      'utf8',
    );
    const caFile = path.join(demoDir(p.config), `${d.id}-ca.pem`);
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
  const trail = await api.GET('/v1/deployments/{id}/audit', { params: { path: { id: d.id } } });
  if (!trail.data) throw new Error(`GET /v1/deployments/${d.id}/audit answered ${trail.response.status}`);
  ctx.out('\naudit trail of this deployment, from GET /v1/deployments/{id}/audit (no values in it):\n');
  for (const a of trail.data.entries)
    ctx.out(
      `  ${a.at.replace('T', ' ').slice(0, 23)}  ${a.operation.padEnd(6)} ${a.outcome.padEnd(7)} secret ${a.secretId?.slice(0, 8) ?? '-'} v${a.version ?? '-'}  by ${a.actor ?? '-'}${a.jobId ? ` job ${a.jobId.slice(0, 18)}…` : ''}\n`,
    );
  const chain = trail.data.chain;
  ctx.out(`audit chain of the organisation: ${chain.ok ? `intact (${chain.rowsChecked} rows)` : 'BROKEN'}\n`);
  // The token is read from its 0600 file by curl itself: it is in no argv, no history, no log.
  const h = `-H @${follow.headerFile}`;
  ctx.out(
    `\nfollow its events   curl -sN ${h} ${follow.url}/v1/deployments/${d.id}/events\n` +
      `read its audit      curl -s ${h} ${follow.url}/v1/deployments/${d.id}/audit\n` +
      `                    (the demo token in ${follow.headerFile} is revoked by --down)\n`,
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
  const dir = demoDir(config);
  let state = await loadState(dir);
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
    const newOrg = async (): Promise<void> => {
      const org = await p.db.rpc<{ id: string }>('organizations__create', { p_name: 'demo organisation' });
      state.orgId = org.id;
      await saveState(dir, state);
    };
    if (!state.orgId) await newOrg();

    // A token for the demo organisation, as `cortexctl tokens create` makes one; the previous
    // run's is revoked. Its plaintext goes only to the API client and a 0600 curl header file.
    const tokens = makeTokenStore({ rpc: p.db.rpc });
    if (state.tokenId) await tokens.revoke(state.tokenId, 'demo').catch(() => undefined);
    const createToken = (orgId: string) =>
      tokens.create({ orgId, name: 'demo', scopes: [...DEMO_SCOPES] }, 'demo');
    const made = await createToken(state.orgId!).catch(async (err: unknown) => {
      // The saved state names an organisation this database does not have (it was reset, or
      // DATABASE_URL points elsewhere): its deployments and keys are not here either. Start a new
      // demo state; the API process, if still running, is reused or replaced as usual.
      if (!isOrchestratorError(err) || err.code !== 'not_found') throw err;
      ctx.out(
        `the demo state (${path.relative(process.cwd(), stateFile(dir))}) names organisation ${state.orgId}, which this database does not have (reset?): starting a new demo state` +
          (state.deployments.length
            ? `; the local hosts of its ${state.deployments.length} deployment(s), if any, are removed by npm run local:cleanup`
            : '') +
          '\n',
      );
      state = { secretIds: [], deployments: [], ...(state.api ? { api: state.api } : {}) };
      await newOrg();
      return createToken(state.orgId!);
    });
    ctx.out(`organisation ${state.orgId}\n`);
    state.tokenId = made.id;
    await saveState(dir, state);
    const headerFile = await writeTokenHeaderFile(dir, made.token);
    const srv = await ensureDemoApi({
      dir,
      env: ctx.env,
      preferredPort: config.API_PORT,
      ...(state.api ? { previous: state.api } : {}),
    });
    state.api = { pid: srv.pid, url: srv.url };
    await saveState(dir, state);
    ctx.out(
      `api        ${srv.url}${srv.reused ? ' (still running from the last demo)' : ''}, pid ${srv.pid}, log ${path.relative(process.cwd(), path.join(dir, 'api.log'))}\n` +
        `token      ${made.prefix}… (scopes ${DEMO_SCOPES.join(', ')}; in ${path.relative(process.cwd(), headerFile)}, mode 0600)\n`,
    );
    const api = makeApiClient({ baseUrl: srv.url, token: made.token, userAgent: 'cortex-demo' });

    const key = new Secret(`sk-ant-demo-${randomBytes(24).toString('base64url')}`);
    const stored = await api.POST('/v1/secrets', {
      body: { name: 'demo Anthropic key', provider: 'anthropic', value: key.reveal() },
    });
    if (!stored.data)
      throw new Error(`POST /v1/secrets answered ${stored.response.status}: ${stored.error?.detail ?? ''}`);
    const meta = stored.data;
    state.secretIds.push(meta.id);
    await saveState(dir, state);
    ctx.out(
      `demo key   POST /v1/secrets → ${meta.id}  ${meta.displayPrefix}  fingerprint ${meta.fingerprint.slice(0, 16)}…\n`,
    );

    const subdomain = `demo-${randomBytes(3).toString('hex')}`;
    const requested = await api.POST('/v1/deployments', {
      params: { header: { 'idempotency-key': `demo-${subdomain}` } },
      body: {
        name: 'demo agent',
        subdomain,
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: meta.id }],
      },
    });
    if (!requested.data)
      throw new Error(
        `POST /v1/deployments answered ${requested.response.status}: ${requested.error?.detail ?? ''}`,
      );
    const deploymentId = requested.data.deploymentId;
    state.deployments.push(deploymentId);
    await saveState(dir, state);
    ctx.out(`deployment POST /v1/deployments → ${deploymentId} (${subdomain}.${config.DNS_ZONE})\n`);
    const d = await followViaApi(
      api,
      ctx,
      deploymentId,
      (x) => ['ready', 'failed', 'deleted'].includes(x.status),
      600_000,
    );
    if (d.status !== 'ready') {
      ctx.out(
        `the deployment is ${d.status}${d.failedStep ? ` at step ${d.failedStep}: ${d.failureCode ?? ''} (${d.failureReason ?? ''})` : ''}\n` +
          // the API tells the demo organisation's token a code and a fixed sentence; the recorded text is ops'
          `the recorded error: npm run cortexctl -- status ${d.id}\n` +
          `retry with: npm run cortexctl -- retry ${d.id}   (with a worker running: npm run cortexctl -- worker)\n`,
      );
      return 1;
    }
    await report(p, ctx, d, t0, api, { url: srv.url, headerFile });
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
