import {
  CommandError,
  ConcurrentUpdateError,
  StackAlreadyExistsError,
  StackNotFoundError,
} from '@pulumi/pulumi/automation';
import { classify } from '../../../orchestrator/errors';
import { errorSummary, hcloudCodes, mapStackError } from '../../../orchestrator/infra/stack-errors';
import { CLOUD_CONFLICT_STDERR, commandError, diyLockedStderr } from '../../support/fake-workspace';

const ctx = { stack: 'agent-x', op: 'up' };

describe('the fake builds the SDK’s own error classes from CLI stderr', () => {
  it.each([
    [diyLockedStderr('agent-x', new Date()), ConcurrentUpdateError],
    [CLOUD_CONFLICT_STDERR, ConcurrentUpdateError],
    ["error: no stack named 'agent-x' found", StackNotFoundError],
    ["error: stack 'agent-x' already exists", StackAlreadyExistsError],
    ['error: anything else', CommandError],
  ])('%s', (stderr, cls) => {
    const err = commandError({ stderr });
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(CommandError);
    expect(err.message).toContain(stderr.split('\n')[0]);
  });
});

describe('mapStackError', () => {
  it.each([
    [diyLockedStderr('agent-x', new Date()), 'stack_locked', 'retry'],
    ["error: no stack named 'agent-x' found", 'stack_not_found', 'retry'],
    ["error: stack 'agent-x' already exists", 'conflict', 'retry'],
    [
      '  * creating server: limit reached (rate_limit_exceeded, 0a1b2c3d4e5f)',
      'provider_rate_limited',
      'retry',
    ],
    ['error: token is read-only (token_readonly)', 'provider_rejected', 'permanent'],
    ['error: server limit exceeded (resource_limit_exceeded)', 'provider_rejected', 'permanent'],
    ['error: SSH key not unique (uniqueness_error)', 'provider_rejected', 'permanent'],
    ['error: internal server error (server_error)', 'provider_unavailable', 'retry'],
    [
      'error: Post "https://api.hetzner.cloud/v1/servers": read tcp: connection reset by peer',
      'provider_unavailable',
      'retry',
    ],
    [
      'error: getting secrets manager: passphrase must be set with PULUMI_CONFIG_PASSPHRASE',
      'config_invalid',
      'permanent',
    ],
    ['error: running program: TypeError: boom', 'stack_failed', 'retry'],
  ])('%s → %s', (stderr, code, retry) => {
    const mapped = mapStackError(commandError({ stderr }), ctx);
    expect(mapped.code).toBe(code);
    expect(classify(mapped)).toBe(retry);
    expect(mapped.message).toContain('pulumi up of stack agent-x');
    expect(mapped.cause).toBeInstanceOf(CommandError);
  });

  it('maps the SDK’s ENOENT for a missing CLI to a config error pointing at doctor', () => {
    // What LocalWorkspace throws when `pulumi` is not on PATH (execa's spawn error, wrapped).
    const spawn = Object.assign(new Error('spawn pulumi ENOENT'), { code: 'ENOENT' });
    const mapped = mapStackError(commandError({ stderr: spawn.message, code: -2, err: spawn }), ctx);
    expect(mapped.code).toBe('config_invalid');
    expect(mapped.message).toContain('cortexctl -- doctor');
  });

  it('passes orchestrator errors through and wraps unknown ones as internal', () => {
    expect(mapStackError(new TypeError('bad'), ctx).code).toBe('internal');
  });

  it('reads Hetzner codes with and without correlation ids, and summarises only error lines', () => {
    expect(hcloudCodes('x (rate_limit_exceeded, 9f8e7d) y (server_error)')).toEqual([
      'rate_limit_exceeded',
      'server_error',
    ]);
    const summary = errorSummary(
      'Updating (agent-x)\n  + server creating\nerror: update failed\n  * boom (server_error)\n',
    );
    expect(summary).toBe('error: update failed | * boom (server_error)');
    expect(errorSummary(`error: ${'x'.repeat(1000)}`).length).toBeLessThanOrEqual(401);
  });
});
