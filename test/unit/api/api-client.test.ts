import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { makeApiClient } from '../../../orchestrator/api/client';

/**
 * The typed client's types are generated from the document the API serves; this fails when a route
 * changed and `npm run api:client` was not run (or the checked-in file was edited by hand). The
 * generator runs as a child process, as `npm run api:client` runs it (see generate.ts).
 */
jest.setTimeout(90_000);

const root = path.resolve(__dirname, '../../..');
const generator = (arg: '--stdout' | '--document'): Promise<string> =>
  promisify(execFile)(
    process.execPath,
    [path.join(root, 'node_modules/tsx/dist/cli.mjs'), 'orchestrator/api/client/generate.ts', arg],
    { cwd: root, maxBuffer: 32 * 1024 * 1024, env: { ...process.env, LOG_LEVEL: 'silent' } },
  ).then((r) => r.stdout);

describe('typed API client', () => {
  it('the checked-in schema.d.ts is what the served OpenAPI document generates (run `npm run api:client`)', async () => {
    const checkedIn = await readFile(path.join(root, 'orchestrator/api/client/schema.d.ts'), 'utf8');
    const fresh = await generator('--stdout');
    expect(fresh.length).toBeGreaterThan(1000);
    expect(fresh === checkedIn ? 'in sync' : 'drifted: run npm run api:client and commit schema.d.ts').toBe(
      'in sync',
    );
  });

  it('the served document holds the onboarding endpoints, and no ops surface', async () => {
    const doc = JSON.parse(await generator('--document')) as {
      openapi: string;
      paths: Record<string, unknown>;
    };
    expect(doc.openapi).toMatch(/^3\.1/);
    const paths = Object.keys(doc.paths);
    expect(paths).toEqual(
      expect.arrayContaining([
        '/v1/secrets',
        '/v1/deployments',
        '/v1/deployments/{id}',
        '/v1/deployments/{id}/audit',
      ]),
    );
    expect(paths.filter((p) => p.startsWith('/admin') || p === '/metrics')).toEqual([]);
  });

  it('sends the token in the Authorization header only, and calls the path it was given', async () => {
    const seen: Request[] = [];
    const api = makeApiClient({
      baseUrl: 'http://api.invalid/',
      token: 'ctx_test',
      userAgent: 'onboarding/1',
      fetch: async (req) => {
        seen.push(req);
        return new Response(JSON.stringify({ status: 'ok' }), {
          headers: { 'content-type': 'application/json' },
        });
      },
    });
    const { data } = await api.GET('/healthz');
    expect(data).toEqual({ status: 'ok' });
    expect(seen[0]?.url).toBe('http://api.invalid/healthz');
    expect(seen[0]?.headers.get('authorization')).toBe('Bearer ctx_test');
    expect(seen[0]?.headers.get('user-agent')).toBe('onboarding/1');
  });
});
