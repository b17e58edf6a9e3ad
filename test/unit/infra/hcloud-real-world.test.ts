import { loadConfig } from '../../../orchestrator/config';
import { classify, OrchestratorError } from '../../../orchestrator/errors';
import { formatDoctor, runDoctor } from '../../../orchestrator/cli/doctor';
import { makeHcloudApi } from '../../../orchestrator/infra/hcloud-api';
import { makeFakeHcloudApi } from '../../support/fake-hcloud-api';
import { hcloudWorld, hostSpec, ZONE } from '../../support/hcloud-world';
import { rejection } from '../../support/rejection';

/** Issue 13: the Hetzner path against a fake project that fails as the real one does. */

describe('item 4: DNS problems are found before a server is paid for', () => {
  const hcloudEnv = { HOST_PROVIDER: 'hcloud', HCLOUD_TOKEN: 'a'.repeat(64) };

  it.each(['DNS_ZONE', 'ORCHESTRATOR_SSH_CIDRS'])('HOST_PROVIDER=hcloud requires %s explicitly', (key) => {
    const env: Record<string, string> = {
      ...hcloudEnv,
      DNS_ZONE: ZONE,
      ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32',
    };
    delete env[key];
    let err: unknown;
    try {
      loadConfig(env);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OrchestratorError);
    expect((err as OrchestratorError).code).toBe('config_invalid');
    expect((err as Error).message).toContain(`${key}: is required when HOST_PROVIDER=hcloud`);
    // Control: set, it loads; local mode keeps its defaults.
    expect(loadConfig({ ...env, [key]: key === 'DNS_ZONE' ? ZONE : '192.0.2.10/32' }).DNS_ZONE).toBe(ZONE);
    expect(loadConfig({}).ORCHESTRATOR_SSH_CIDRS).toEqual(['127.0.0.1/32']);
  });

  it('a zone missing from the project: refused permanently, no stack operation, no server', async () => {
    const w = await hcloudWorld({}, { zones: [] });
    const spec = hostSpec();
    const err = await rejection(w.hosts.ensure(spec));
    expect([err.code, classify(err)]).toEqual(['config_invalid', 'permanent']);
    expect(err.message).toContain(`DNS_ZONE ${ZONE} is not a zone of this Hetzner Cloud project`);
    expect(w.ups()).toBe(1); // the platform stack's only
    expect(w.cloud.servers.size).toBe(0);
  });

  it('a secondary zone: refused before any server', async () => {
    const w = await hcloudWorld({}, { zones: [] });
    w.cloud.addZone(ZONE, 'secondary');
    const err = await rejection(w.hosts.ensure(hostSpec()));
    expect(err.code).toBe('config_invalid');
    expect(err.message).toContain('secondary zone');
    expect(w.cloud.servers.size).toBe(0);
  });

  it('a record another owner made under the name: refused naming the subdomain; a free name goes through', async () => {
    const w = await hcloudWorld();
    const taken = hostSpec();
    w.cloud.rrsets.set(`${ZONE}/${taken.subdomain}/AAAA`, {
      zone: ZONE,
      name: taken.subdomain,
      type: 'AAAA',
      labels: {},
    });
    const err = await rejection(w.hosts.ensure(taken));
    expect([err.code, err.field, classify(err)]).toEqual(['invalid_input', 'subdomain', 'permanent']);
    expect(w.cloud.servers.size).toBe(0);
    expect(w.ups()).toBe(1);
    // Control: another name in the same zone is created, server and records.
    const free = hostSpec();
    await w.hosts.ensure(free);
    expect(w.serversOf(free.deploymentId)).toHaveLength(1);
    expect(w.cloud.rrsets.has(`${ZONE}/${free.subdomain}/A`)).toBe(true);
  });

  it('cortexctl doctor checks the zone through the API', async () => {
    const token = 'c'.repeat(64);
    const run = async (zones: string[], mode: 'primary' | 'secondary' = 'primary') => {
      const cloud = makeFakeHcloudApi();
      for (const z of zones) cloud.addZone(z, mode);
      const checks = await runDoctor(
        {
          config: {
            HOST_PROVIDER: 'hcloud',
            DNS_ZONE: ZONE,
            HCLOUD_TOKEN: token,
            PULUMI_CONFIG_PASSPHRASE: 'x',
            PULUMI_BACKEND_URL: undefined,
            PULUMI_SECRETS_PROVIDER: undefined,
            CORTEX_STATE_DIR: '.local',
          },
          pulumiHome: '/p',
          hcloudVersion: '1.41.0',
        },
        {
          which: async () => '/bin/pulumi',
          readDir: async () => ['resource-hcloud-v1.41.0'],
          hcloudApi: (t) => makeHcloudApi({ token: t, fetch: cloud.fetch }),
        },
      );
      return checks.find((c) => c.name === 'DNS zone');
    };
    expect(await run([ZONE])).toMatchObject({ ok: true });
    expect(await run([])).toMatchObject({ ok: false });
    expect((await run([ZONE], 'secondary'))?.detail).toContain('secondary');
    const text = formatDoctor([(await run([]))!]);
    expect(text).toContain('MISSING  DNS zone');
    expect(text).not.toContain(token);
  });
});
