import {
  CommandError,
  ConcurrentUpdateError,
  StackAlreadyExistsError,
  StackNotFoundError,
} from '@pulumi/pulumi/automation';
import { inspect } from 'node:util';
import { classify, type OrchestratorError } from '../../../../orchestrator/errors';
import { makeLogger } from '../../../../orchestrator/log';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { errorSummary, hcloudCodes, mapStackError } from '../../../../orchestrator/infra/hcloud/stack-errors';
import { canary } from '../../../support/canary';
import { CLOUD_CONFLICT_STDERR, commandError, diyLockedStderr } from '../../../support/fake-workspace';

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
    // The SDK's error holds the CLI's whole output: never kept as the cause.
    expect(mapped.cause).toBeUndefined();
  });

  it('maps the SDK’s ENOENT for a missing CLI to a config error pointing at doctor', () => {
    // What LocalWorkspace throws when `pulumi` is not on PATH (execa's spawn error, wrapped).
    const spawn = Object.assign(new Error('spawn pulumi ENOENT'), { code: 'ENOENT' });
    const mapped = mapStackError(commandError({ stderr: spawn.message, code: -2, err: spawn }), ctx);
    expect(mapped.code).toBe('config_invalid');
    expect(mapped.message).toContain('cortexctl -- doctor');
  });

  it('passes orchestrator errors through and wraps unknown ones as internal', () => {
    const mapped = mapStackError(new TypeError('bad'), ctx);
    expect(mapped.code).toBe('internal');
    expect(mapStackError(mapped, ctx)).toBe(mapped);
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

describe('mapStackError never reveals what the CLI echoed', () => {
  const hostKey = generateHostKeyPair().privateKey.reveal();
  const keyLines = hostKey.split('\n').filter((l) => l.length > 0 && !l.startsWith('-----'));
  const customer = canary('anthropic');
  // What the worker passes as `redact`: the user data, which carries the host key (and here a canary).
  const userData = `#cloud-config\nwrite_files:\n  - content: ${customer}\nssh_keys:\n  ed25519_private: |\n${hostKey
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n')}\n`;
  const redact = [userData];

  /** Every way the error reaches a person: message, String(), inspect() and a pino line of `{ err }`. */
  const renderings = (mapped: OrchestratorError): string[] => {
    const lines: string[] = [];
    const log = makeLogger({ level: 'info' }, { write: (s: string) => void lines.push(s) });
    log.error({ err: mapped }, 'provisioning failed');
    expect(lines).toHaveLength(1);
    return [mapped.message, String(mapped), inspect(mapped, { depth: 10 }), lines.join('')];
  };

  // Every line names an error so that errorSummary would quote it, were it not scrubbed.
  const echoed = [
    `error: cloud-init user data rejected: ${customer}`,
    ...keyLines.map((l) => `  * failed near ${l}`),
  ].join('\n');

  it.each([
    ['a Hetzner rejection', `${echoed}\n  * creating server: invalid (invalid_input)`, 'provider_rejected'],
    ['a rate limit', `${echoed}\n  * limit (rate_limit_exceeded)`, 'provider_rate_limited'],
    ['an outage', `${echoed}\n  * down (server_error)`, 'provider_unavailable'],
    ['a network error', `${echoed}\nerror: read tcp: connection reset by peer`, 'provider_unavailable'],
    ['an unknown failure', `${echoed}\nerror: update failed`, 'stack_failed'],
    ['a lock', `${diyLockedStderr('agent-x', new Date())}\n${echoed}`, 'stack_locked'],
    ['a missing passphrase', `${echoed}\nerror: passphrase must be set`, 'config_invalid'],
  ])('%s: neither the canary nor the host private key, in stdout or stderr', (_what, stderr, code) => {
    const fromStderr = mapStackError(commandError({ stderr }), { ...ctx, redact });
    expect(fromStderr.code).toBe(code);
    // The SDK's message holds the CLI's stdout too.
    const fromStdout = mapStackError(commandError({ stdout: stderr, stderr: 'error: failed' }), {
      ...ctx,
      redact,
    });
    for (const mapped of [fromStderr, fromStdout]) {
      for (const text of renderings(mapped)) {
        expect(text).toContain('pulumi up of stack agent-x');
        expect(text).not.toContain(customer);
        for (const line of keyLines) expect(text).not.toContain(line);
      }
    }
  });

  it('still says what went wrong, with the secret parts replaced', () => {
    const mapped = mapStackError(commandError({ stderr: `${echoed}\nerror: update failed` }), {
      ...ctx,
      redact,
    });
    expect(mapped.message).toContain('[REDACTED]');
    expect(mapped.message).toContain('error: update failed');
  });

  it('scrubs an error that is not the CLI’s, and keeps no raw cause', () => {
    const inner = new Error(`program crashed on ${customer}`);
    const mapped = mapStackError(Object.assign(new Error(`wrapped: ${keyLines[0]}`), { cause: inner }), {
      ...ctx,
      redact,
    });
    expect(mapped.code).toBe('internal');
    for (const text of renderings(mapped)) {
      expect(text).not.toContain(customer);
      for (const line of keyLines) expect(text).not.toContain(line);
    }
  });
});
