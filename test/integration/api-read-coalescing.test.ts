import { randomBytes } from 'node:crypto';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool } from '../support/db';

/**
 * GET /v1/deployments/:id shares Postgres reads between concurrent requests
 * (orchestrator/api/read-coalescer.ts) and must stay exactly as fresh as a read of its own: while
 * 16 loops read the deployment continuously (reads in flight at every moment), a step is recorded,
 * and the GET sent after that commit must show it — every time, over many rounds. Another org's
 * token sharing those reads still gets 404. Then the decisive case, made deterministic: a read held
 * in flight (its snapshot taken, then blocked on a lock) while a change commits; a GET sent after
 * the commit must not be answered by that read (a coalescer that joined reads in flight fails it).
 */
let t: TestApi;
beforeAll(async () => {
  t = await startTestApi({ API_RATE_LIMIT: '1000000/min' });
});
afterAll(async () => {
  await t?.close();
});

type Doc = { steps: { step: string; status: string }[] };

it('under concurrent reads, a GET sent after a change committed always shows it; another org still gets 404', async () => {
  const rpc = t.pipeline.db.rpc;
  const orgId = await t.org();
  const tag = randomBytes(4).toString('hex');
  const dep = await rpc<{ id: string }>('deployments__create', {
    p_org_id: orgId,
    p_name: `Coalesce ${tag}`,
    p_subdomain: `co-${tag}`,
  });
  const { token } = await t.token(orgId, ['deployments:read']);
  const other = await t.token(await t.org(), ['deployments:read']);
  const fence = `coalesce-${tag}`;
  const { run } = await rpc<{ run: number }>('deployments__begin', {
    p_deployment_id: dep.id,
    p_operation: 'provision',
    p_token: fence,
  });
  const path = `/v1/deployments/${dep.id}`;

  let stop = false;
  let background = 0;
  let foreign = 0;
  const loops = Array.from({ length: 16 }, async (_, i) => {
    while (!stop) {
      const r = await t.call('GET', path, { token: i === 0 ? other.token : token });
      if (i === 0) {
        expect(r.status).toBe(404);
        foreign += 1;
      } else {
        expect(r.status).toBe(200);
        background += 1;
      }
    }
  });
  try {
    // the pipeline's step names, each started then finished: 16 changes, each checked at once
    const steps = ['host', 'dns', 'ssh', 'configure', 'secrets', 'start', 'health', 'ready'];
    for (const step of steps) {
      await rpc('deployment_steps__start', {
        p_deployment_id: dep.id,
        p_run: run,
        p_step: step,
        p_token: fence,
      });
      const started = (await t.call('GET', path, { token })).json as Doc;
      expect(started.steps.find((s) => s.step === step)?.status).toBe('running');
      await rpc('deployment_steps__finish', {
        p_deployment_id: dep.id,
        p_run: run,
        p_step: step,
        p_status: 'succeeded',
        p_token: fence,
      });
      const finished = (await t.call('GET', path, { token })).json as Doc;
      expect(finished.steps.find((s) => s.step === step)?.status).toBe('succeeded');
    }
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  // the reads really were concurrent with the changes
  expect(background).toBeGreaterThan(50);
  expect(foreign).toBeGreaterThan(3);
});

it('a GET arriving while a read that predates a change is still in flight gets a read of its own, after the change', async () => {
  const rpc = t.pipeline.db.rpc;
  const orgId = await t.org();
  const tag = randomBytes(4).toString('hex');
  const dep = await rpc<{ id: string }>('deployments__create', {
    p_org_id: orgId,
    p_name: `Before ${tag}`,
    p_subdomain: `cl-${tag}`,
  });
  const { token } = await t.token(orgId, ['deployments:read']);
  const path = `/v1/deployments/${dep.id}`;
  expect(((await t.call('GET', path, { token })).json as { name: string }).name).toBe(`Before ${tag}`);
  const admin = adminPool();
  const locker = await admin.connect();
  try {
    // hold the steps table: a deployment read takes its snapshot, then waits for this lock
    await locker.query('begin');
    await locker.query('lock table public.deployment_steps in access exclusive mode');
    const first = t.call('GET', path, { token }); // its read starts now, before the change
    // until that read waits for the lock (its snapshot taken): a fixed sleep would race on a busy machine
    for (let waited = 0; ; waited += 20) {
      const { rows } = await admin.query<{ n: string }>(
        `select count(*) as n from pg_catalog.pg_locks l
          where l.relation = 'public.deployment_steps'::regclass and not l.granted
            and l.database = (select oid from pg_catalog.pg_database where datname = pg_catalog.current_database())`,
      );
      if (Number(rows[0]?.n) > 0) break;
      if (waited > 10_000) throw new Error('the first read never waited for the lock');
      await new Promise((r) => setTimeout(r, 20));
    }
    // the change commits (deployments, not the locked table) while that read is in flight
    await admin.query('update public.deployments set name = $1 where id = $2', [`After ${tag}`, dep.id]);
    const second = t.call('GET', path, { token }); // sent after the commit
    await new Promise((r) => setTimeout(r, 300));
    await locker.query('rollback');
    const [a, b] = await Promise.all([first, second]);
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    // the first read's snapshot predates the change: that is right for the request that started it
    expect((a.json as { name: string }).name).toBe(`Before ${tag}`);
    // the second request arrived after the commit: never answered by that read
    expect((b.json as { name: string }).name).toBe(`After ${tag}`);
  } finally {
    await locker.query('rollback').catch(() => undefined);
    locker.release();
    await admin.end();
  }
});
