import { randomBytes, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { generateToken, type ApiPrincipal, type Scope } from '../../../orchestrator/api/api-tokens';
import { registerAuth } from '../../../orchestrator/api/auth';
import {
  FAILURE_MESSAGES,
  GENERIC_FAILURE_MESSAGE,
  publicFailure,
} from '../../../orchestrator/api/failure-catalogue';
import { makeErrorHandler } from '../../../orchestrator/api/problems';
import { deploymentRoutes } from '../../../orchestrator/api/routes/deployments';
import type { ApiDeps } from '../../../orchestrator/api/server';
import type { Deployment, StepRecord } from '../../../orchestrator/deployments/deployment-store';
import { OrchestratorError } from '../../../orchestrator/errors';
import { makeLogger } from '../../../orchestrator/log';
import { reasonOf } from '../../../orchestrator/steps/step-runner';

/**
 * Review R15 finding 7: GET /v1/deployments/:id answered with each failed step's recorded text
 * (the runner's `code: message`: a Hetzner or Pulumi summary, an SSH error naming a host and a
 * port) and the same text as `failureReason`, to the onboarding app, i.e. the customer. Now an
 * organisation's token gets the code and the catalogue's fixed sentence; an ops token with
 * `admin` also gets the recorded text (`errorDetail`, `failureDetail`). The real route module
 * under the real auth hook and serializer, over a fake store holding reasons with canaries, made
 * by the runner's own reasonOf from the errors the adapters throw.
 */
const log = makeLogger({ level: 'silent', name: 'deployment-failures-test' });

const tag = randomBytes(4).toString('hex');
/** Words of the recorded text that must reach no customer: a host, addresses, a port, provider text. */
const CANARIES = [
  `canary-${tag}.hel1.hetzner.example`,
  '198.51.100.73',
  '2001:db8::7',
  ':2222',
  `resource_limit_exceeded_${tag}`,
  'hcloud:index/server:Server',
  `pulumi-stack-${tag}`,
] as const;

const sshReason = reasonOf(
  new OrchestratorError(
    'ssh_connect_failed',
    `ssh to canary-${tag}.hel1.hetzner.example (198.51.100.73:2222, [2001:db8::7]:2222) failed: connect ECONNREFUSED`,
  ),
);
const stackReason = reasonOf(
  new OrchestratorError(
    'stack_failed',
    `pulumi up on pulumi-stack-${tag} failed: hcloud:index/server:Server agent: ` +
      `server limit reached (resource_limit_exceeded_${tag}) at https://api.hetzner.cloud/v1/servers`,
  ),
);

const step = (over: Partial<StepRecord>): StepRecord => ({
  run: 1,
  operation: 'provision',
  step: 'host',
  status: 'succeeded',
  attempt: 1,
  startedAt: '2026-12-01T00:00:00.000Z',
  finishedAt: '2026-12-01T00:00:01.000Z',
  durationMs: 1000,
  error: null,
  ...over,
});

const deployment = (orgId: string, over: Partial<Deployment> = {}): Deployment => ({
  id: randomUUID(),
  orgId,
  name: 'agent',
  subdomain: `agent-${tag}`,
  provider: 'hcloud',
  region: 'hel1',
  serverType: 'cx23',
  runtime: 'echo',
  status: 'failed',
  serverId: `server-${tag}`,
  ipv4: null,
  ipv6: null,
  dnsName: null,
  hostPublicKey: `ssh-ed25519 AAAA${tag}`,
  hostPublicKeyPending: null,
  hostRekeyedAt: null,
  currentOperation: 'provision',
  currentRun: 1,
  failedStep: 'ssh',
  failureReason: sshReason,
  createdAt: '2026-12-01T00:00:00.000Z',
  updatedAt: '2026-12-01T00:00:09.000Z',
  steps: [
    step({ step: 'host', status: 'failed', attempt: 1, error: stackReason }),
    step({ step: 'host', status: 'succeeded', attempt: 2, run: 2 }),
    step({ step: 'ssh', status: 'failed', error: sshReason }),
  ],
  ...over,
});

const start = async () => {
  const orgA = randomUUID();
  const records = new Map<string, Deployment>();
  const store = {
    get: async (id: string) => {
      const d = records.get(id);
      if (!d) throw new OrchestratorError('not_found', 'deployment not found');
      return d;
    },
  };
  const principals = new Map<string, ApiPrincipal>();
  const token = (orgId: string | null, scopes: Scope[]): string => {
    const t = generateToken();
    principals.set(t, { tokenId: randomUUID(), orgId, scopes });
    return t;
  };
  const app: FastifyInstance = Fastify();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(makeErrorHandler(log));
  registerAuth(app, { authenticate: async (t: string) => principals.get(t) });
  const deps = {
    log,
    tokens: {},
    pipeline: { config: {}, db: { rpc: async () => undefined }, queues: {}, store },
  } as unknown as ApiDeps;
  await app.register(deploymentRoutes, deps);
  await app.ready();
  const add = (d: Deployment): Deployment => (records.set(d.id, d), d);
  const get = async (id: string, t: string) => {
    const r = await app.inject({
      method: 'GET',
      url: `/v1/deployments/${id}`,
      headers: { authorization: `Bearer ${t}` },
    });
    expect(r.statusCode).toBe(200);
    // the answer depends on the token: no shared cache stores it (review R22 finding 2)
    expect(r.headers['cache-control']).toBe('no-store');
    expect(r.headers.vary).toBe('authorization');
    return {
      text: r.body,
      json: JSON.parse(r.body) as Record<string, unknown> & { steps: Record<string, unknown>[] },
    };
  };
  return { app, orgA, add, get, token };
};

describe('GET /v1/deployments/:id: failures as codes and fixed sentences (review R15 finding 7)', () => {
  it("an organisation's token gets the code and the catalogue's sentence, no word of the recorded text", async () => {
    const t = await start();
    const d = t.add(deployment(t.orgA));
    // a positive control: the record the route reads holds every canary
    for (const c of CANARIES) expect(JSON.stringify(d)).toContain(c);
    const { text, json } = await t.get(d.id, t.token(t.orgA, ['deployments:read']));
    for (const c of CANARIES) expect(text).not.toContain(c);
    expect(text).not.toContain(`ssh-ed25519 AAAA${tag}`);
    expect(text).not.toContain(`server-${tag}`);
    expect(json).toMatchObject({
      status: 'failed',
      failedStep: 'ssh',
      failureCode: 'ssh_connect_failed',
      failureReason: 'The server could not be reached.',
    });
    expect(json.steps.map((s) => [s.step, s.status, s.errorCode, s.error])).toEqual([
      ['host', 'failed', 'stack_failed', 'The cloud provider could not create or change the server.'],
      ['host', 'succeeded', null, null],
      ['ssh', 'failed', 'ssh_connect_failed', 'The server could not be reached.'],
    ]);
    expect(Object.keys(json)).not.toContain('failureDetail');
    for (const s of json.steps) expect(Object.keys(s)).not.toContain('errorDetail');
  });

  it('an ops token with admin also gets the recorded text; an ops token without admin does not', async () => {
    const t = await start();
    const d = t.add(deployment(t.orgA));
    const admin = await t.get(d.id, t.token(null, ['deployments:read', 'admin']));
    expect(admin.json).toMatchObject({
      failureCode: 'ssh_connect_failed',
      failureReason: 'The server could not be reached.',
      failureDetail: sshReason,
    });
    expect(admin.json.steps.map((s) => s.errorDetail ?? null)).toEqual([stackReason, null, sshReason]);
    for (const c of CANARIES) expect(admin.text).toContain(c);

    // an ops token acting for organisations (a platform backend) may relay what it reads
    const ops = await t.get(d.id, t.token(null, ['deployments:read']));
    for (const c of CANARIES) expect(ops.text).not.toContain(c);
    expect(ops.json).toMatchObject({ failureCode: 'ssh_connect_failed' });
    expect(Object.keys(ops.json)).not.toContain('failureDetail');
  });

  it('a reason that is not ours is `unexpected`; a code the catalogue does not know gets the generic sentence', async () => {
    const t = await start();
    const d = t.add(
      deployment(t.orgA, {
        failedStep: 'dns',
        failureReason: `future_code_${tag}: record for 203.0.113.9 refused`,
        steps: [
          step({ step: 'host', status: 'failed', error: 'unexpected error (TypeError)' }),
          step({ step: 'dns', status: 'failed', error: `Zone ${tag}.example: 203.0.113.9 refused` }),
          step({
            step: 'ssh',
            status: 'failed',
            error: `future_code_${tag}: record for 203.0.113.9 refused`,
          }),
        ],
      }),
    );
    const { text, json } = await t.get(d.id, t.token(t.orgA, ['deployments:read']));
    expect(text).not.toContain('203.0.113.9');
    expect(text).not.toContain(`${tag}.example`);
    expect(text).not.toContain('TypeError');
    expect([json.failureCode, json.failureReason]).toEqual([`future_code_${tag}`, GENERIC_FAILURE_MESSAGE]);
    expect(json.steps.map((s) => [s.errorCode, s.error])).toEqual([
      ['unexpected', FAILURE_MESSAGES.unexpected],
      ['unexpected', FAILURE_MESSAGES.unexpected],
      [`future_code_${tag}`, GENERIC_FAILURE_MESSAGE],
    ]);
  });
});

describe('the failure catalogue', () => {
  it('derives the code as the event stream does, and a code named like an Object key is not a message', () => {
    expect(publicFailure(null)).toBeNull();
    expect(publicFailure('timeout: step health did not finish within 120 s')).toEqual({
      code: 'timeout',
      message: FAILURE_MESSAGES.timeout,
    });
    // deployment_events__reason_code: a bare word (no `: `) is not one of our reasons
    expect(publicFailure('timeout')?.code).toBe('unexpected');
    expect(publicFailure('constructor: x')).toEqual({
      code: 'constructor',
      message: GENERIC_FAILURE_MESSAGE,
    });
    expect(publicFailure('tostring: x')?.message).toBe(GENERIC_FAILURE_MESSAGE);
  });

  it('every sentence is one short sentence of plain words: no address, port, path or quoted text', () => {
    for (const [code, m] of Object.entries({ ...FAILURE_MESSAGES, generic: GENERIC_FAILURE_MESSAGE })) {
      expect([code, m.length <= 120, /^[A-Z][A-Za-z ,;'-]+\.$/.test(m)]).toEqual([code, true, true]);
    }
  });

  it("docs/api.md lists every code with the catalogue's sentence", async () => {
    const doc = await readFile(path.resolve(__dirname, '../../../docs/api.md'), 'utf8');
    for (const [code, m] of Object.entries(FAILURE_MESSAGES))
      expect([code, doc.includes(`| \`${code}\``) && doc.includes(m)]).toEqual([code, true]);
    expect(doc).toContain(GENERIC_FAILURE_MESSAGE);
  });
});
