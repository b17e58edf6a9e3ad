import { randomUUID } from 'node:crypto';
import { jobIdFor, parsePayload } from '../../../orchestrator/queues/job-payloads';

describe('job payloads: ids only', () => {
  const id = randomUUID();
  it('accepts exactly a deployment id for provision and deprovision, a known task for maintenance', () => {
    expect(parsePayload('provision', { deploymentId: id })).toEqual({
      ok: true,
      payload: { deploymentId: id },
    });
    expect(parsePayload('deprovision', { deploymentId: id })).toEqual({
      ok: true,
      payload: { deploymentId: id },
    });
    expect(parsePayload('maintenance', { task: 'reconcile' })).toEqual({
      ok: true,
      payload: { task: 'reconcile' },
    });
  });

  it.each([
    ['an extra field holding a value', { deploymentId: id, apiKey: 'sk-ant-canary-x' }, '(root)'],
    ['a value instead of an id', { deploymentId: 'sk-ant-canary-x' }, 'deploymentId'],
    ['nothing', {}, 'deploymentId'],
    ['a string', 'sk-ant-canary-x', '(root)'],
    ['null', null, '(root)'],
  ])('refuses %s, naming the path and never the value', (_what, data, path) => {
    const r = parsePayload('provision', data);
    expect(r).toEqual({ ok: false, problem: `payload refused for queue provision: ${path} (ids only)` });
  });

  it('refuses an unknown maintenance task', () => {
    expect(parsePayload('maintenance', { task: 'rm -rf' })).toEqual({
      ok: false,
      problem: 'payload refused for queue maintenance: task (ids only)',
    });
  });

  it('job ids are deterministic and carry no ":" (BullMQ key separator)', () => {
    expect(jobIdFor('provision', id)).toBe(`provision-${id}`);
    expect(jobIdFor('provision', id)).not.toContain(':');
    expect(() => jobIdFor('provision', 'a:b')).toThrow('job id key must be [A-Za-z0-9_-]');
    expect(() => jobIdFor('provision', '')).toThrow();
  });
});
