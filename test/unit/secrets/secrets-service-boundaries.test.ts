import { randomUUID } from 'node:crypto';
import type { Rpc } from '../../../orchestrator/db/rpc';
import { metrics } from '../../../orchestrator/metrics/metrics';
import { Secret } from '../../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../../orchestrator/secrets/secrets-service';
import { canary } from '../../support/canary';
import { rejection } from '../../support/rejection';

/**
 * Mutation-testing survivors of the secrets service. cortex_secret_access_total counts every secret access by operation and outcome: a read counts
 * each value it returned, a denial or an error once. Checked by the counter's change around each
 * call (written for mutation testing: the labels and counts were unchecked).
 */
const service = (answers: Record<string, unknown>) => {
  const rpc = (async (fn: string) => answers[fn]) as Rpc;
  return makeSecretsService({ rpc, fingerprintKey: makeMemoryFingerprintKey() });
};
const counts = async (): Promise<Record<string, number>> => {
  const out: Record<string, number> = {};
  for (const v of (await metrics.secretAccess.get()).values)
    out[`${String(v.labels.operation)}/${String(v.labels.outcome)}`] = v.value;
  return out;
};
/** The counter's changes while `fn` runs, only the labels that moved. */
const changes = async (fn: () => Promise<unknown>): Promise<Record<string, number>> => {
  const before = await counts();
  await fn().catch(() => undefined);
  const after = await counts();
  return Object.fromEntries(
    Object.entries(after)
      .map(([k, v]) => [k, v - (before[k] ?? 0)] as const)
      .filter(([, d]) => d !== 0),
  );
};
const DEP = randomUUID();
const meta = { secret_id: randomUUID(), version: 1, display_prefix: 'sk-…', fingerprint: 'f'.repeat(64) };

describe('the secret-access metric', () => {
  it('counts a create as create/success, once', async () => {
    const s = service({ secrets__create: meta });
    expect(
      await changes(() =>
        s.create({ orgId: randomUUID(), name: 'n', provider: 'openai', value: new Secret(canary()) }),
      ),
    ).toEqual({ 'create/success': 1 });
  });

  it('counts a read by the values it returned, and a denial or an error once', async () => {
    const secrets = [1, 2, 3].map((version) => ({
      env_var: `K${version}`,
      secret_id: randomUUID(),
      version,
      value: canary(),
    }));
    const read = (answer: unknown) =>
      service({ deployment_secrets__intend_read: { intent_id: 'i' }, deployment_secrets__read: answer });
    expect(await changes(() => read({ status: 'ok', secrets }).readForDeployment(DEP))).toEqual({
      'read/success': 3,
    });
    expect(await changes(() => read({ status: 'denied', reason: 'r' }).readForDeployment(DEP))).toEqual({
      'read/denied': 1,
    });
    expect(await changes(() => read({ status: 'error', reason: 'r' }).readForDeployment(DEP))).toEqual({
      'read/error': 1,
    });
  });

  it('counts a platform read by its outcome', async () => {
    const read = (answer: unknown) =>
      service({ platform_secrets__intend_read: { intent_id: 'i' }, platform_secrets__read: answer });
    expect(
      await changes(() => read({ status: 'ok', value: canary(), version: 1 }).readPlatformSecret('k')),
    ).toEqual({ 'platform_read/success': 1 });
    for (const status of ['denied', 'error'] as const) {
      const s = read({ status, reason: 'r' });
      expect(await changes(() => s.readPlatformSecret('k'))).toEqual({ [`platform_read/${status}`]: 1 });
      await rejection(s.readPlatformSecret('k'));
    }
  });
});

describe('a platform read answer', () => {
  it('is a value only when its status is ok: a denial or an error that carries one is still refused', async () => {
    for (const [status, code] of [
      ['denied', 'secret_denied'],
      ['error', 'db_error'],
    ] as const) {
      const s = service({
        platform_secrets__intend_read: { intent_id: 'i' },
        platform_secrets__read: { status, reason: 'r', value: canary() },
      });
      const err = await rejection(s.readPlatformSecret('k'));
      expect([err.code, err.message]).toEqual([code, 'r']);
    }
  });
});
