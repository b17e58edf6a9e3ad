import { createHash } from 'node:crypto';
import {
  displayPrefix,
  generateToken,
  hashToken,
  parseScopes,
  TOKEN_FORMAT,
} from '../../../orchestrator/api/api-tokens';
import { ApiProblem, apiField, toProblem } from '../../../orchestrator/api/problems';
import { OrchestratorError } from '../../../orchestrator/errors';
import { mapDbError } from '../../../orchestrator/db/rpc';

describe('API tokens', () => {
  it('are ctx_ + 43 base62 characters, all different, shown by their first 8 after ctx_', () => {
    const tokens = Array.from({ length: 200 }, generateToken);
    for (const t of tokens) expect(t).toMatch(TOKEN_FORMAT);
    expect(new Set(tokens).size).toBe(200);
    // every base62 character turns up (no alphabet truncated by a modulo slip)
    expect(
      new Set(
        tokens
          .join('')
          .slice(0, 200 * 47)
          .replace(/ctx_/g, ''),
      ).size,
    ).toBe(62);
    const t = tokens[0] ?? '';
    expect(displayPrefix(t)).toBe(t.slice(4, 12));
    expect(hashToken(t)).toBe(createHash('sha256').update(t).digest('hex'));
  });

  it('scopes from the CLI name the bad one by position, not by its text', () => {
    expect(parseScopes('deployments:read, audit:read')).toEqual(['deployments:read', 'audit:read']);
    expect(() => parseScopes('audit:read,sk-oops-value')).toThrow(/^scope\[1\]: must be one of/);
    expect(() => parseScopes('audit:read,sk-oops-value')).not.toThrow(/sk-oops/);
    expect(() => parseScopes(' , ')).toThrow(/at least one scope/);
  });
});

describe('problem documents', () => {
  it('bad input from the services names the API field, in the API’s spelling', () => {
    expect(apiField('bindings[3].secret_id')).toBe('bindings.3.secretId');
    const p = toProblem(
      new OrchestratorError('secret_denied', 'bindings[0].secret_id: no active secret with this id', {
        field: 'bindings[0].secret_id',
      }),
    );
    expect(p).toMatchObject({
      status: 422,
      field: 'bindings.0.secretId',
      detail: 'bindings.0.secretId: no active secret with this id',
    });
  });

  it("keeps the database's own words out: constraint names, SQLSTATEs, function names, quoted values", () => {
    const dup = toProblem(
      mapDbError('deployments__request', {
        code: '23505',
        message: 'duplicate key value violates unique constraint "deployments_subdomain_live_key"',
      }),
    );
    expect(dup).toMatchObject({ status: 409, field: 'subdomain', detail: 'subdomain: is already in use' });
    const nf = toProblem(
      mapDbError('deployments__describe', {
        code: 'P0002',
        message: 'deployment 0b7d8a54-8f0e-4c59-9d0d-6f3c3f1f2b11 not found',
      }),
    );
    expect(nf).toMatchObject({
      status: 404,
      detail: 'deployment 0b7d8a54-8f0e-4c59-9d0d-6f3c3f1f2b11 not found',
    });
    const quoted = toProblem(
      mapDbError('secrets__create', {
        code: '22P02',
        message: 'invalid input syntax for type uuid: "sk-live-123"',
      }),
    );
    expect(quoted.status).toBe(400);
    for (const p of [dup, nf, quoted])
      expect(JSON.stringify(p)).not.toMatch(/SQLSTATE|constraint|__|sk-live/);
  });

  it('an unknown error is a 500 that says nothing of it', () => {
    const p = toProblem(new Error('connect to 10.0.0.5 with password hunter2 failed'));
    expect(p).toEqual({
      type: expect.stringContaining('internal'),
      title: 'Internal Server Error',
      status: 500,
      detail: 'an internal error occurred; it has been logged',
    });
    expect(toProblem(new OrchestratorError('db_unavailable', 'pg at 10.0.0.5 down')).detail).not.toContain(
      '10.0',
    );
  });

  it('fastify’s own errors become problems without their messages', () => {
    const err = Object.assign(new Error('Unexpected token s in JSON at position 12: "sk-secret'), {
      code: 'FST_ERR_CTP_INVALID_JSON_BODY',
      statusCode: 400,
    });
    expect(toProblem(err)).toMatchObject({ status: 400, field: 'body', detail: 'body: is not valid JSON' });
    const other = Object.assign(new Error('header x: "sk-secret"'), { statusCode: 431 });
    expect(JSON.stringify(toProblem(other))).not.toContain('sk-secret');
    expect(toProblem(new ApiProblem(404, 'not-found', 'deployment not found')).status).toBe(404);
  });
});
