import { randomUUID } from 'node:crypto';
import type { DeploymentStore } from '../../../orchestrator/deployments/deployment-store';
import { makeDeploymentsService } from '../../../orchestrator/deployments/deployments-service';
import { rejection } from '../../support/rejection';

/** Bad input is refused naming the field, before the store or the queue sees anything. */
const setup = () => {
  const request = jest.fn();
  const enqueue = jest.fn();
  const service = makeDeploymentsService({
    store: { request } as unknown as DeploymentStore,
    queues: { enqueue },
    provider: 'local',
  });
  return { service, request, enqueue };
};
const good = { orgId: randomUUID(), name: 'agent', subdomain: 'agent-1', bindings: [] };

describe('deployments service: request validation', () => {
  it.each([
    [
      'a reserved subdomain',
      { subdomain: 'www' },
      'subdomain',
      'subdomain: is reserved for the platform; choose another',
    ],
    [
      'a punycode subdomain',
      { subdomain: 'xn--80ak6aa92e' },
      'subdomain',
      'subdomain: must not be punycode (xn--)',
    ],
    ['an upper-case subdomain', { subdomain: 'Agent' }, 'subdomain', undefined],
    [
      'a bidi override in the name',
      { name: 'evil\u202Etxt.exe' },
      'name',
      'name: must not contain control or bidirectional formatting characters',
    ],
    [
      'a C1 control in the name',
      { name: 'a\u009bb' },
      'name',
      'name: must not contain control or bidirectional formatting characters',
    ],
    ['an unknown field', { value: 'sk-ant-x' }, 'input', undefined],
    [
      'a bad env name',
      { bindings: [{ envVar: 'lower', secretId: randomUUID() }] },
      'bindings.0.envVar',
      undefined,
    ],
    [
      'a reserved env name',
      { bindings: [{ envVar: 'LD_PRELOAD', secretId: randomUUID() }] },
      'bindings.0.envVar',
      undefined,
    ],
    [
      'a variable bound twice',
      {
        bindings: [
          { envVar: 'K', secretId: randomUUID() },
          { envVar: 'K', secretId: randomUUID() },
        ],
      },
      'bindings',
      undefined,
    ],
    ['a runtime that needs the internet, in local mode', { runtime: 'openclaw' }, 'runtime', undefined],
  ])('refuses %s, naming %s, with nothing stored or enqueued', async (_what, over, field, message) => {
    const { service, request, enqueue } = setup();
    const err = (await rejection(service.request({ ...good, ...over } as never))) as {
      code: string;
      field: string;
      message: string;
    };
    expect({ code: err.code, field: err.field }).toEqual({ code: 'invalid_input', field });
    if (message) expect(err.message).toBe(message);
    expect(request).not.toHaveBeenCalled();
    expect(enqueue).not.toHaveBeenCalled();
  });

  it('a denial from the contract is secret_denied naming the binding, and nothing is enqueued', async () => {
    const { service, request, enqueue } = setup();
    request.mockResolvedValue({
      status: 'denied',
      field: 'bindings[0].secret_id',
      reason: 'no active secret with this id in the organization',
    });
    const err = (await rejection(
      service.request({ ...good, bindings: [{ envVar: 'K', secretId: randomUUID() }] }),
    )) as {
      code: string;
      field: string;
    };
    expect({ code: err.code, field: err.field }).toEqual({
      code: 'secret_denied',
      field: 'bindings[0].secret_id',
    });
    expect(enqueue).not.toHaveBeenCalled();
  });
});

describe('deployments service: watch', () => {
  const step = (run: number, name: string, status: string) => ({
    run,
    operation: 'provision',
    step: name,
    status,
  });
  const at = (status: string, readyStep: string) =>
    ({
      id: randomUUID(),
      status,
      currentRun: 2,
      steps: [step(1, 'ready', 'running'), step(2, 'ready', readyStep)],
    }) as never;

  it('waits past a final status until the run’s last step is recorded (the `ready` step sets `ready` before its own end)', async () => {
    const answers = [
      at('provisioning', 'running'),
      at('ready', 'running'),
      at('ready', 'running'),
      at('ready', 'succeeded'),
    ];
    const get = jest.fn(async () => answers.shift() ?? at('ready', 'succeeded'));
    const service = makeDeploymentsService({
      store: { get } as unknown as DeploymentStore,
      queues: { enqueue: jest.fn() },
      provider: 'local',
    });
    const seen: string[] = [];
    const d = await service.watch(randomUUID(), (x) => seen.push(`${x.status}/${x.steps[1]?.status}`), {
      intervalMs: 1,
    });
    // an older run's step left `running` by a crash does not hold the watch
    expect(d.steps.map((s) => s.status)).toEqual(['running', 'succeeded']);
    expect(get).toHaveBeenCalledTimes(4);
    expect(seen).toEqual(['provisioning/running', 'ready/running', 'ready/succeeded']);
  });

  it('an explicit `until` is honoured as given', async () => {
    const get = jest.fn(async () => at('ready', 'running'));
    const service = makeDeploymentsService({
      store: { get } as unknown as DeploymentStore,
      queues: { enqueue: jest.fn() },
      provider: 'local',
    });
    const d = await service.watch(randomUUID(), () => undefined, { until: (x) => x.status === 'ready' });
    expect([d.status, get.mock.calls.length]).toEqual(['ready', 1]);
  });
});
