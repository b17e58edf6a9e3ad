import { Resolver } from 'node:dns/promises';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Workers } from '../../orchestrator/queues/workers';
import { agentCommands, parseMainPid } from '../../orchestrator/remote/agent-commands';
import { ENV_FILE_PATH } from '../../orchestrator/remote/env-file';
import { run } from '../../orchestrator/remote/ssh-shell';
import { httpsGet } from '../../orchestrator/steps/https-health';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import { AGENT_UNIT_NAME } from '../../templates/systemd-unit';
import { agentProbes, parseEnviron } from '../support/agent-probes';
import { adminPool, auditRows } from '../support/db';
import { canary } from '../support/canary';
import { orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';
import { Secret } from '../../orchestrator/secret';

/**
 * The provisioning pipeline end to end on real parts: Postgres with the project's migrations,
 * Redis and BullMQ, a real local host, the local authoritative DNS server, SSH with pinned keys,
 * Caddy with its local CA.
 */
jest.setTimeout(300_000);

let p: Pipeline;
let workers: Workers;
const admin = adminPool();

beforeAll(async () => {
  p = await startTestPipeline();
  workers = p.makeWorkerSet();
  workers.start();
});
afterAll(async () => {
  await p?.close(5_000);
  await admin.end();
});

const resolve4 = async (name: string): Promise<string[]> => {
  const r = new Resolver();
  r.setServers([`127.0.0.1:53530`]);
  return r.resolve4(name).catch(() => []);
};

describe('provision → ready → deprovision on a real local host', () => {
  it('provisions to ready, serves verified HTTPS through DNS, writes exactly the bound key, and tears down leaving nothing', async () => {
    const org = await orgWithKey(p);
    const subdomain = uniqueSubdomain();
    const { deploymentId } = await p.service.request({
      orgId: org.orgId,
      name: 'pipeline test',
      subdomain,
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
    });
    const seen: string[] = [];
    const ready = await p.service.watch(deploymentId, (d) => seen.push(d.status), { timeoutMs: 240_000 });
    expect({ status: ready.status, failed: ready.failedStep, reason: ready.failureReason }).toEqual({
      status: 'ready',
      failed: null,
      reason: null,
    });
    expect(ready.steps.filter((s) => s.operation === 'provision').map((s) => [s.step, s.status])).toEqual(
      // configure finds what cloud-init placed already in place (same digests, owners, modes)
      ['host', 'dns', 'ssh', 'configure', 'secrets', 'start', 'health', 'ready'].map((s) => [
        s,
        s === 'configure' ? 'skipped' : 'succeeded',
      ]),
    );
    // Re-keyed: the pinned key is no longer the one that travelled in user data.
    expect(ready.hostRekeyedAt).not.toBeNull();
    expect(ready.hostPublicKeyPending).toBeNull();

    const name = `${subdomain}.${p.config.DNS_ZONE}`;
    expect(ready.dnsName).toBe(name);
    expect(await resolve4(name)).toEqual([ready.ipv4]);

    const { shell } = await p.access.connect(ready);
    try {
      expect((await run(shell, agentCommands.stat(ENV_FILE_PATH))).stdout.toString().trim()).toBe(
        '0 0 600 regular file',
      );
      const envFile = (await run(shell, agentProbes.readFile(ENV_FILE_PATH))).stdout.toString('utf8');
      expect(envFile.match(/^[A-Z_][A-Z0-9_]*=/gm)).toEqual(['ANTHROPIC_API_KEY=']);
      expect(envFile).toContain(org.value);
      const pid = parseMainPid((await run(shell, agentCommands.mainPid(AGENT_UNIT_NAME))).stdout.toString());
      const environ = parseEnviron((await run(shell, agentProbes.processEnviron(pid))).stdout);
      expect(environ.get('ANTHROPIC_API_KEY')?.toString('utf8')).toBe(org.value);
      const ca = (
        await run(shell, agentCommands.caddyRootCertificate(caddyLocalRootCaPath()))
      ).stdout.toString();
      const health = await httpsGet({ ip: ready.ipv4 ?? '', servername: name, path: '/health', ca });
      expect(health.status).toBe(200);
      expect(health.body).not.toContain(org.value);
    } finally {
      await shell.close();
    }

    const rows = await auditRows(admin, { deploymentId });
    const reads = rows.filter((r) => r.operation === 'read');
    expect(reads.map((r) => [r.secret_id, r.outcome, r.actor])).toEqual([
      [org.secretId, 'success', 'orchestrator'],
    ]);
    expect(reads[0]?.job_id).toBe(`provision-${deploymentId}`);
    expect((await p.secrets.verifyAuditLog(org.orgId)).ok).toBe(true);

    // A key scoped to this deployment: deprovisioning deletes its vault secret too.
    const scoped = await p.secrets.create({
      orgId: org.orgId,
      name: 'scoped key',
      provider: 'openai',
      value: new Secret(canary('openai')),
      deploymentId,
    });
    const vaultRows = async (): Promise<number> =>
      Number(
        (
          await admin.query<{ n: string }>(`select count(*) as n from vault.secrets where name like $1`, [
            `org:${org.orgId}:deployment:${deploymentId}:%`,
          ])
        ).rows[0]?.n,
      );
    expect(await vaultRows()).toBe(1);

    // Deprovision: DNS, host, the deployment's secrets and bindings, then deleted.
    await p.service.destroy(deploymentId);
    const gone = await p.service.watch(deploymentId, () => undefined, {
      timeoutMs: 120_000,
      until: (d) => d.status === 'deleted',
    });
    expect(gone.status).toBe('deleted');
    expect(gone.ipv4).toBeNull();
    expect(gone.hostPublicKey).toBeNull();
    expect(await p.hosts.describe(deploymentId)).toBeUndefined();
    expect(await resolve4(name)).toEqual([]);
    expect(await p.dns.lookup(name)).toBeUndefined();
    const unbinds = (await auditRows(admin, { deploymentId })).filter((r) => r.operation === 'unbind');
    expect(unbinds).toHaveLength(1);
    expect(await vaultRows()).toBe(0);
    const deletes = (await auditRows(admin, { deploymentId })).filter((r) => r.operation === 'delete');
    expect(deletes.map((r) => [r.secret_id, r.outcome])).toEqual([[scoped.secretId, 'success']]);
    const keys = await p.redis.keys(`${p.config.QUEUE_PREFIX}:*${deploymentId}*`);
    expect(keys).toEqual([]);
  });
});
