import { loadConfig } from '../../../../orchestrator/config';
import { classify, OrchestratorError } from '../../../../orchestrator/errors';
import { formatDoctor, runDoctor } from '../../../../orchestrator/cli/doctor';
import { makeHcloudApi } from '../../../../orchestrator/infra/hcloud/api';
import { ensurePlatformStack } from '../../../../orchestrator/infra/hcloud/platform-stack';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { makeFakeHcloudApi } from '../../../support/fake-hcloud-api';
import { FORCE_NEW } from '../../../support/fake-workspace';
import { hcloudWorld, hostSpec, ZONE } from '../../../support/hcloud-world';
import { rejection } from '../../../support/rejection';

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

describe('item 2: a changed default never replaces, resizes or deletes a live server', () => {
  const serverOf = (w: Awaited<ReturnType<typeof hcloudWorld>>, deploymentId: string) =>
    w.fake.stacks
      .get(`agent-${deploymentId}`)!
      .resources.find((r) => r.type === 'hcloud:index/server:Server')!;

  it('location, server type and image stay what the host was created with when the defaults change', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec({ location: 'hel1', serverType: 'cx33' });
    const first = await w.hosts.ensure(spec);
    const changed = w.provider(
      loadConfig({
        HOST_PROVIDER: 'hcloud',
        HCLOUD_TOKEN: w.config.HCLOUD_TOKEN!,
        DNS_ZONE: ZONE,
        ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32',
        HCLOUD_LOCATION: 'ash',
        HCLOUD_SERVER_TYPE: 'cpx41',
        HCLOUD_IMAGE: 'debian-12',
      }),
    );
    // A retry whose HostSpec carries no location or type (a row from before they were stored).
    const { location: _l, serverType: _t, ...bare } = spec;
    expect(await changed.ensure(bare)).toEqual(first);
    expect(serverOf(w, spec.deploymentId).inputs).toMatchObject({
      location: 'hel1',
      serverType: 'cx33',
      image: 'ubuntu-24.04',
    });
    expect(w.serversOf(spec.deploymentId)).toEqual([
      expect.objectContaining({
        id: Number(first.serverId),
        location: 'hel1',
        serverType: 'cx33',
        image: 'ubuntu-24.04',
      }),
    ]);
  });

  it('a HostSpec asking another location or type for a live host is refused before any stack change', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    await w.hosts.ensure(spec);
    const ups = w.ups();
    for (const over of [{ location: 'nbg1' }, { serverType: 'cx53' }]) {
      const err = await rejection(w.hosts.ensure({ ...spec, ...over }));
      expect([err.code, err.field, classify(err)]).toEqual([
        'invalid_input',
        Object.keys(over)[0],
        'permanent',
      ]);
    }
    expect(w.ups()).toBe(ups);
  });

  it('a new host without a stored location is refused (never derived from the current config)', async () => {
    const w = await hcloudWorld();
    const { location: _l, ...bare } = hostSpec();
    const err = await rejection(w.hosts.ensure(bare));
    expect([err.code, err.field]).toEqual(['invalid_input', 'location']);
    expect(w.cloud.servers.size).toBe(0);
  });

  it('a plan that would replace or resize the live server is refused after preview; nothing applied', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    const host = await w.hosts.ensure(spec);
    // The state says the server was made in another location (an older program, a hand edit):
    // the next `up` would delete and recreate it.
    const server = serverOf(w, spec.deploymentId);
    (server.inputs as Record<string, unknown>).location = 'nbg1';
    const ups = w.ups();
    const err = await rejection(w.hosts.ensure(spec));
    expect([err.code, classify(err)]).toEqual(['provider_rejected', 'permanent']);
    expect(err.message).toContain('replace the live server (changed: location)');
    expect(w.ups()).toBe(ups);
    expect(w.fake.commandLines.some((c) => c[1] === 'preview')).toBe(true);
    expect(w.cloud.servers.has(Number(host.serverId))).toBe(true);
    // A resize (server type changed in the state) is refused the same way.
    (server.inputs as Record<string, unknown>).location = 'fsn1';
    (server.inputs as Record<string, unknown>).serverType = 'cx53';
    expect((await rejection(w.hosts.ensure(spec))).message).toContain("change the live server's serverType");
    // Control: the state restored, the same ensure goes through.
    (server.inputs as Record<string, unknown>).serverType = 'cx23';
    await expect(w.hosts.ensure(spec)).resolves.toEqual(host);
  });

  it('changed user data or SSH key ids (ForceNew in the provider) never replace the live server: ignoreChanges', async () => {
    // terraform-provider-hcloud marks user_data and ssh_keys ForceNew (docs/infrastructure.md,
    // "Verified against the provider's source"); the fake replaces on them too, unless ignored.
    expect(FORCE_NEW['hcloud:index/server:Server']).toEqual(expect.arrayContaining(['userData', 'sshKeys']));
    const w = await hcloudWorld();
    const spec = hostSpec();
    const host = await w.hosts.ensure(spec);
    const server = serverOf(w, spec.deploymentId);
    expect(server.options?.ignoreChanges).toEqual(expect.arrayContaining(['userData', 'sshKeys']));
    // The state says the server was made with other user data and another key (an older template,
    // a rotated orchestrator key): the next `up` keeps it.
    (server.inputs as Record<string, unknown>).userData = 'an older template';
    (server.inputs as Record<string, unknown>).sshKeys = ['999'];
    await expect(w.hosts.ensure(spec)).resolves.toEqual(host);
    expect(serverOf(w, spec.deploymentId).assignedId).toBe(server.assignedId);
    expect(w.serversOf(spec.deploymentId)).toEqual([expect.objectContaining({ id: Number(host.serverId) })]);
  });

  it('servers carry delete and rebuild protection, lifted only by destroy', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    const host = await w.hosts.ensure(spec);
    const id = Number(host.serverId);
    expect(w.cloud.servers.get(id)?.protection).toEqual({ delete: true, rebuild: true });
    // A delete by hand (or by a mistaken script) is refused by Hetzner.
    const res = await w.cloud.fetch(`https://api.hetzner.cloud/v1/servers/${id}`, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${w.config.HCLOUD_TOKEN!}` },
    });
    expect([res.status, await res.json()]).toEqual([
      403,
      expect.objectContaining({ error: expect.objectContaining({ code: 'protected' }) }),
    ]);
    await w.hosts.destroy(spec.deploymentId);
    expect(w.cloud.servers.size).toBe(0);
    expect(w.cloud.firewalls.size).toBe(0);
    expect([...w.cloud.rrsets.keys()].filter((k) => k.includes(spec.subdomain))).toEqual([]);
  });
});

describe('item 1: an interrupted create leaves no untracked server and does not block the deployment', () => {
  const stackOf = (w: Awaited<ReturnType<typeof hcloudWorld>>, id: string) =>
    w.fake.stacks.get(`agent-${id}`)!;

  it('a server whose create was pending when the CLI died is deleted, the pending create cleared, the host made once', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    // provider + firewall reach the state; the server's POST was accepted but never recorded.
    w.fake.failPartwayNext({ completed: 2, pending: 1, reachedProvider: true });
    expect((await rejection(w.hosts.ensure(spec))).code).toBe('stack_failed');
    const [stray] = w.serversOf(spec.deploymentId);
    expect(stray).toBeDefined();
    expect(stackOf(w, spec.deploymentId).pendingOperations.map((p) => p.type)).toEqual(['creating']);

    const host = await w.hosts.ensure(spec);
    expect(w.serversOf(spec.deploymentId).map((s) => s.id)).toEqual([Number(host.serverId)]);
    expect(w.cloud.servers.has(stray!.id)).toBe(false);
    expect(stackOf(w, spec.deploymentId).pendingOperations).toEqual([]);
    expect(w.fake.commandLines.some((c) => c.includes('--clear-pending-creates'))).toBe(true);
    // Destroy then forgets nothing.
    await w.hosts.destroy(spec.deploymentId);
    expect(w.cloud.servers.size + w.cloud.firewalls.size).toBe(0);
  });

  it('deprovisioning right after an interrupted create removes the stray too', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    w.fake.failPartwayNext({ completed: 2, pending: 1, reachedProvider: true });
    await rejection(w.hosts.ensure(spec));
    expect(w.serversOf(spec.deploymentId)).toHaveLength(1);
    await w.hosts.destroy(spec.deploymentId);
    expect(w.serversOf(spec.deploymentId)).toEqual([]);
    expect(w.cloud.firewalls.size).toBe(0);
    expect(w.fake.stacks.has(`agent-${spec.deploymentId}`)).toBe(false);
  });

  it('a DNS record created just before a crash is cleared the same way', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    // provider, firewall and server done; the A record's create reached Hetzner, then the CLI died.
    w.fake.failPartwayNext({ completed: 3, pending: 1, reachedProvider: true });
    await rejection(w.hosts.ensure(spec));
    expect(w.cloud.rrsets.has(`${ZONE}/${spec.subdomain}/A`)).toBe(true);
    const host = await w.hosts.ensure(spec);
    expect(host.dnsName).toBe(`${spec.subdomain}.${ZONE}`);
    expect(w.serversOf(spec.deploymentId)).toHaveLength(1);
    const types = stackOf(w, spec.deploymentId).resources.map((r) => r.name);
    expect(types.filter((n) => n === 'dns-a')).toHaveLength(1);
  });

  it('a uniqueness_error naming this deployment’s own untracked server is cleared once; another owner’s is left alone', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    const name = `agent-${spec.deploymentId}`;
    const labels = { 'managed-by': 'cortex', org: spec.orgId, deployment: spec.deploymentId };
    // Made by an `up` whose pending operation never reached the state (no pending create to read).
    w.cloud.servers.set(900_001, {
      id: 900_001,
      name,
      labels,
      protection: { delete: true, rebuild: true },
      serverType: 'cx23',
      location: 'fsn1',
      image: 'ubuntu-24.04',
    });
    const host = await w.hosts.ensure(spec);
    expect(w.cloud.servers.has(900_001)).toBe(false);
    expect(w.serversOf(spec.deploymentId).map((s) => s.id)).toEqual([Number(host.serverId)]);

    // Control: a server of that name without this deployment's label is not ours to delete.
    const other = hostSpec();
    w.cloud.servers.set(900_002, {
      id: 900_002,
      name: `agent-${other.deploymentId}`,
      labels: { 'managed-by': 'someone-else' },
      protection: { delete: false, rebuild: false },
      serverType: 'cx23',
      location: 'fsn1',
      image: 'ubuntu-24.04',
    });
    const err = await rejection(w.hosts.ensure(other));
    expect([err.code, classify(err)]).toEqual(['provider_rejected', 'permanent']);
    expect(err.message).toContain('uniqueness_error');
    expect(w.cloud.servers.has(900_002)).toBe(true);
  });
});

describe('item 3: destroy finishes after something was deleted by hand', () => {
  it.each([
    ['the server', 'not_found'],
    ['the firewall', 'plugin crash'],
  ])('%s deleted in the console: the destroy fails (%s), refreshes, destroys again', async (what) => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    const host = await w.hosts.ensure(spec);
    if (what === 'the server') w.cloud.servers.delete(Number(host.serverId));
    else w.cloud.firewalls.clear();
    await w.hosts.destroy(spec.deploymentId);
    expect(w.fake.stacks.has(`agent-${spec.deploymentId}`)).toBe(false);
    expect(w.cloud.servers.size + w.cloud.firewalls.size).toBe(0);
    expect([...w.cloud.rrsets.keys()].filter((k) => k.includes(spec.subdomain))).toEqual([]);
    const ops = w.fake.commandLines.map((c) => c[1]).filter((c) => c === 'destroy' || c === 'refresh');
    expect(ops).toEqual(['destroy', 'refresh', 'destroy']);
    expect(await w.hosts.describe(spec.deploymentId)).toBeUndefined();
  });

  it('a destroy that fails for another reason is not retried blindly (control: rate limit)', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    await w.hosts.ensure(spec);
    w.fake.failNext('destroy', 'error: deleting server: limit reached (rate_limit_exceeded)');
    expect((await rejection(w.hosts.destroy(spec.deploymentId))).code).toBe('provider_rate_limited');
    expect(w.fake.commandLines.filter((c) => c[1] === 'refresh')).toEqual([]);
  });
});

describe("item 6: rotating the orchestrator's SSH key", () => {
  it('replaces the key delete-first (the name is unique), leaves running servers alone, and new servers get the new id within the cache age', async () => {
    const w = await hcloudWorld();
    const before = w.hosts;
    const a = hostSpec();
    const hostA = await before.ensure(a);
    const [oldKey] = [...w.cloud.sshKeys.values()];
    expect(oldKey).toBeDefined();

    const rotated = generateHostKeyPair().publicKey;
    const newId = await ensurePlatformStack(w.runner, {
      orchestratorPublicKey: rotated,
      pollInterval: w.config.HCLOUD_POLL_INTERVAL,
    });
    expect([...w.cloud.sshKeys.values()]).toEqual([
      { id: Number(newId), name: 'cortex-orchestrator', publicKey: rotated },
    ]);
    expect(newId).not.toBe(String(oldKey!.id));
    // Running servers keep their key and are not touched by the next ensure.
    await expect(before.ensure(a)).resolves.toEqual(hostA);
    expect(w.cloud.servers.has(Number(hostA.serverId))).toBe(true);

    // Within the cache age the old id may still be handed out; after it, the new one.
    w.clock.ms += 60_000;
    const b = hostSpec();
    await before.ensure(b);
    const serverB = w.fake.stacks
      .get(`agent-${b.deploymentId}`)!
      .resources.find((r) => r.type === 'hcloud:index/server:Server')!;
    expect(serverB.inputs.sshKeys).toEqual([newId]);
  });
});

describe('item 5: the key handed out is the key the server has', () => {
  it('a part-failed first up retried with a new key hands out the key the server was seeded with', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    // provider, firewall and server in the state; the records failed; no outputs.
    w.fake.failPartwayNext({ completed: 3, pending: 0 });
    await rejection(w.hosts.ensure(spec));
    const [server] = w.serversOf(spec.deploymentId);
    expect(await w.hosts.describe(spec.deploymentId)).toBeUndefined();
    // The pipeline's host step generates a new key for the retry (describe said: no host).
    const retry = hostSpec({ deploymentId: spec.deploymentId, orgId: spec.orgId, subdomain: spec.subdomain });
    const host = await w.hosts.ensure(retry);
    expect(host.serverId).toBe(String(server!.id));
    expect(host.hostPublicKey).toBe(spec.hostPublicKey);
    expect((await w.hosts.describe(spec.deploymentId))?.hostPublicKey).toBe(spec.hostPublicKey);
  });

  it('after a re-key, describe hands out the current pin once ensure was given it, not the first-boot key', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    await w.hosts.ensure(spec);
    expect((await w.hosts.describe(spec.deploymentId))?.hostPublicKey).toBe(spec.hostPublicKey);
    const rekeyed = generateHostKeyPair().publicKey;
    expect((await w.hosts.ensure({ ...spec, hostPublicKey: rekeyed })).hostPublicKey).toBe(rekeyed);
    expect((await w.hosts.describe(spec.deploymentId))?.hostPublicKey).toBe(rekeyed);
    // The server was not touched (user data is ignored after creation).
    expect(w.serversOf(spec.deploymentId)).toHaveLength(1);
  });
});

describe('item 8: the orphan sweep finds by label, paged', () => {
  it('lists strays no stack knows (one request per 50), skips a hand-named stack, and destroy removes a stray', async () => {
    const w = await hcloudWorld();
    const live = hostSpec();
    await w.hosts.ensure(live);
    const strays = Array.from({ length: 120 }, () => hostSpec());
    strays.forEach((s, i) =>
      w.cloud.servers.set(800_000 + i, {
        id: 800_000 + i,
        name: `agent-${s.deploymentId}`,
        labels: { 'managed-by': 'cortex', org: s.orgId, deployment: s.deploymentId },
        protection: { delete: true, rebuild: true },
        serverType: 'cx23',
        location: 'fsn1',
        image: 'ubuntu-24.04',
      }),
    );
    const strayRecord = strays[0]!;
    w.cloud.rrsets.set(`${ZONE}/${strayRecord.subdomain}/A`, {
      zone: ZONE,
      name: strayRecord.subdomain,
      type: 'A',
      labels: { 'managed-by': 'cortex', deployment: strayRecord.deploymentId },
    });
    // Someone else's server in the project, and a stack an operator named by hand.
    w.cloud.servers.set(799_999, {
      id: 799_999,
      name: 'bastion',
      labels: { 'managed-by': 'ops' },
      protection: { delete: false, rebuild: false },
      serverType: 'cx23',
      location: 'fsn1',
      image: 'ubuntu-24.04',
    });
    await w.fake.workspace.createOrSelectStack({
      stackName: 'agent-test',
      projectName: 'cortex',
      program: async () => ({}),
    });

    const before = w.cloud.requests.length;
    const ids = await w.hosts.list();
    expect(ids.sort()).toEqual([live.deploymentId, ...strays.map((s) => s.deploymentId)].sort());
    const made = w.cloud.requests.slice(before);
    expect(made.filter((r) => r.startsWith('GET /servers?'))).toHaveLength(3);
    expect(
      made.every((r) => r.includes('per_page=50') && r.includes('label_selector=managed-by%3Dcortex')),
    ).toBe(true);
    expect(made).toHaveLength(5); // 3 pages of servers, 1 of firewalls, 1 of records

    await w.hosts.destroy(strayRecord.deploymentId);
    expect(w.serversOf(strayRecord.deploymentId)).toEqual([]);
    expect(w.cloud.rrsets.has(`${ZONE}/${strayRecord.subdomain}/A`)).toBe(false);
    expect(w.cloud.servers.has(799_999)).toBe(true);
    expect(w.serversOf(live.deploymentId)).toHaveLength(1);
  });
});

describe("the orchestrator's own Hetzner API requests (the README's counts)", () => {
  it('first ensure: 3 (zone, A, AAAA); ensure of a live host: 0; destroy: 4 (unprotect, 3 label listings); list: 3 (one page each)', async () => {
    const w = await hcloudWorld();
    const spec = hostSpec();
    const count = async (fn: () => Promise<unknown>): Promise<string[]> => {
      const before = w.cloud.requests.length;
      await fn();
      return w.cloud.requests
        .slice(before)
        .map((r) => r.split('?')[0]!.replace(/\/servers\/\d+/, '/servers/N'));
    };
    expect(await count(() => w.hosts.ensure(spec))).toEqual([
      'GET /zones',
      `GET /zones/${ZONE}/rrsets/${spec.subdomain}/A`,
      `GET /zones/${ZONE}/rrsets/${spec.subdomain}/AAAA`,
    ]);
    expect(await count(() => w.hosts.ensure(spec))).toEqual([]);
    expect(await count(() => w.hosts.describe(spec.deploymentId))).toEqual([]);
    expect(await count(() => w.hosts.list())).toEqual([
      'GET /servers',
      'GET /firewalls',
      `GET /zones/${ZONE}/rrsets`,
    ]);
    expect(await count(() => w.hosts.destroy(spec.deploymentId))).toEqual([
      'POST /servers/N/actions/change_protection',
      'GET /servers',
      'GET /firewalls',
      `GET /zones/${ZONE}/rrsets`,
    ]);
  });
});
