import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runDemo } from '../../orchestrator/cli/demo';
import { adminPool, testDatabaseUrl } from '../support/db';

/**
 * `npm run demo`, the README's main command, end to end on real parts (Postgres, Redis, a real
 * local host, DNS, the API as a detached child), in a folder of its own (CORTEX_DEMO_DIR) so that a
 * developer's own demo is not touched. It starts from a state file left by a demo against another
 * database (a reset): the demo must notice that its organisation is gone and start afresh rather
 * than fail. Then `--down` removes what it made.
 */
jest.setTimeout(600_000);

const admin = adminPool();
let dir: string;
let env: NodeJS.ProcessEnv;

const demo = async (args: string[]): Promise<{ code: number; out: string }> => {
  let out = '';
  const code = await runDemo(args, { env, out: (t) => void (out += t), isTTY: false });
  return { code, out };
};

const apiPid = async (): Promise<number | undefined> =>
  readFile(path.join(dir, 'state.json'), 'utf8').then(
    (t) => (JSON.parse(t) as { api?: { pid?: number } }).api?.pid,
    () => undefined,
  );

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cortex-demo-'));
  env = {
    ...process.env,
    DATABASE_URL: testDatabaseUrl(),
    CORTEX_STATE_DIR: path.resolve(__dirname, '../../.local'),
    CORTEX_DEMO_DIR: dir,
    QUEUE_PREFIX: `t${randomBytes(5).toString('hex')}`,
    LOG_LEVEL: 'warn',
  };
  delete env.HOST_PROVIDER;
});

afterAll(async () => {
  // If a test failed half-way, do not leave the detached API running.
  const pid = await apiPid();
  if (pid && alive(pid)) process.kill(pid, 'SIGTERM');
  await rm(dir, { recursive: true, force: true });
  await admin.end();
});

test('a stale state (its organisation not in this database) is replaced, the agent provisioned, then --down removes it', async () => {
  const stale = {
    orgId: randomUUID(),
    secretIds: [randomUUID()],
    deployments: [randomUUID()],
    tokenId: randomUUID(),
  };
  await writeFile(path.join(dir, 'state.json'), JSON.stringify(stale));

  const up = await demo([]);
  expect(up.out).toContain(`names organisation ${stale.orgId}, which this database does not have`);
  expect(up.out).toContain('ready in');
  expect(up.code).toBe(0);

  const state = JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8')) as {
    orgId: string;
    deployments: string[];
    secretIds: string[];
    tokenId: string;
    api: { pid: number };
  };
  expect(state.orgId).not.toBe(stale.orgId);
  expect(state.deployments).toHaveLength(1);
  expect(state.deployments).not.toContain(stale.deployments[0]);
  expect(state.secretIds).toHaveLength(1);
  const { rows } = await admin.query<{ status: string; org_id: string }>(
    'select status, org_id from public.deployments where id = $1',
    [state.deployments[0]],
  );
  expect(rows).toEqual([{ status: 'ready', org_id: state.orgId }]);

  // The token is only in the 0600 header file, never printed.
  const header = path.join(dir, 'api-token');
  expect((await stat(header)).mode & 0o777).toBe(0o600);
  const token = (await readFile(header, 'utf8')).replace(/^Authorization: Bearer /, '').trim();
  expect(token.length).toBeGreaterThan(20);
  expect(up.out).not.toContain(token);
  expect(alive(state.api.pid)).toBe(true);

  const down = await demo(['--down']);
  expect(down.code).toBe(0);
  const after = await admin.query<{ status: string }>('select status from public.deployments where id = $1', [
    state.deployments[0],
  ]);
  expect(after.rows).toEqual([{ status: 'deleted' }]);
  await expect(stat(dir)).rejects.toThrow();
  for (let i = 0; i < 50 && alive(state.api.pid); i++) await new Promise((r) => setTimeout(r, 100));
  expect(alive(state.api.pid)).toBe(false);
});
