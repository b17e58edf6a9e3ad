import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CHECKPOINT_FORMAT,
  makeFileCheckpointKey,
  makeMemoryCheckpointKey,
  openCheckpoint,
  signCheckpoint,
  type CheckpointPayload,
} from '../../../orchestrator/audit/checkpoint-signer';
import { rejection } from '../../support/rejection';

const refused = async (p: Promise<unknown>): Promise<Error> => {
  const err = await rejection(p);
  expect(err.code).toBe('config_invalid');
  return err;
};

const payload: CheckpointPayload = {
  format: CHECKPOINT_FORMAT,
  at: '2026-11-30T02:30:00.123456Z',
  chains: [
    {
      chain: '11111111-1111-4111-8111-111111111111',
      seq: 7,
      hash: 'a'.repeat(64),
      at: '2026-11-30T02:29:59.000001Z',
    },
    {
      chain: 'ffffffff-ffff-ffff-ffff-ffffffffffff',
      seq: 2,
      hash: 'b'.repeat(64),
      at: '2026-11-30T01:00:00.000000Z',
    },
  ],
};

describe('checkpoint signatures', () => {
  it('a signed checkpoint opens with its public key and gives back exactly what was signed', async () => {
    const key = makeMemoryCheckpointKey();
    const body = signCheckpoint(payload, await key.signingKey());
    expect(openCheckpoint(body, await key.verifyKey())).toEqual({ ok: true, payload });
  });

  it('refuses a checkpoint whose signed payload was edited (a chain moved back)', async () => {
    const key = makeMemoryCheckpointKey();
    const env = JSON.parse(signCheckpoint(payload, await key.signingKey())) as { payload: string };
    const forged = { ...env, payload: env.payload.replace('"seq":7', '"seq":5') };
    expect(forged.payload).not.toBe(env.payload);
    expect(openCheckpoint(JSON.stringify(forged), await key.verifyKey())).toEqual({
      ok: false,
      reason: 'has a signature that does not verify',
    });
  });

  it('refuses a tampered signature', async () => {
    const key = makeMemoryCheckpointKey();
    const env = JSON.parse(signCheckpoint(payload, await key.signingKey())) as { signature: string };
    const sig = Buffer.from(env.signature, 'base64');
    sig[10] = (sig[10] ?? 0) ^ 1;
    const body = JSON.stringify({ ...env, signature: sig.toString('base64') });
    expect(openCheckpoint(body, await key.verifyKey())).toMatchObject({
      ok: false,
      reason: /does not verify/,
    });
  });

  it('refuses a checkpoint signed by another key, even one that claims our key id', async () => {
    const ours = makeMemoryCheckpointKey();
    const theirs = makeMemoryCheckpointKey();
    const body = signCheckpoint(payload, await theirs.signingKey());
    expect(openCheckpoint(body, await ours.verifyKey())).toMatchObject({
      ok: false,
      reason: /signed by key/,
    });
    const claimed = { ...JSON.parse(body), key_id: (await ours.signingKey()).keyId } as object;
    expect(openCheckpoint(JSON.stringify(claimed), await ours.verifyKey())).toMatchObject({
      ok: false,
      reason: /does not verify/,
    });
  });

  it('refuses garbage and unknown shapes without throwing', async () => {
    const pk = await makeMemoryCheckpointKey().verifyKey();
    expect(openCheckpoint('not json', pk)).toMatchObject({ ok: false });
    expect(openCheckpoint('{"format":"x"}', pk)).toMatchObject({ ok: false });
    expect(() =>
      signCheckpoint({ ...payload, chains: [{ ...payload.chains[0]!, hash: 'xyz' }] }, null as never),
    ).toThrow();
  });
});

describe('the checkpoint key file', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cpk-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is created 0600 on first use, then reused', async () => {
    const file = join(dir, 'keys', 'audit_checkpoint_ed25519');
    const a = await makeFileCheckpointKey(file).signingKey();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'keys')).mode & 0o777).toBe(0o700);
    expect(readFileSync(file, 'utf8')).toContain('BEGIN PRIVATE KEY');
    const b = await makeFileCheckpointKey(file).signingKey();
    expect(b.keyId).toBe(a.keyId);
    const body = signCheckpoint(payload, a);
    expect(openCheckpoint(body, await makeFileCheckpointKey(file).verifyKey())).toMatchObject({ ok: true });
  });

  it('is never created just to verify', async () => {
    const file = join(dir, 'missing');
    const err = await refused(makeFileCheckpointKey(file).verifyKey());
    expect(err.message).toMatch(/does not exist/);
    expect(() => statSync(file)).toThrow();
  });

  it.each([0o640, 0o644, 0o604, 0o660])('refuses mode %o', async (mode) => {
    const file = join(dir, 'k');
    await makeFileCheckpointKey(file).signingKey();
    chmodSync(file, mode);
    const err = await refused(makeFileCheckpointKey(file).signingKey());
    expect(err.message).toMatch(/chmod 600/);
    await refused(makeFileCheckpointKey(file).verifyKey());
  });

  it('refuses a symbolic link and a key of another type', async () => {
    const real = join(dir, 'real');
    await makeFileCheckpointKey(real).signingKey();
    symlinkSync(real, join(dir, 'link'));
    expect((await refused(makeFileCheckpointKey(join(dir, 'link')).signingKey())).message).toMatch(
      /symbolic link/,
    );
    const rsa = join(dir, 'rsa');
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    writeFileSync(rsa, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    expect((await refused(makeFileCheckpointKey(rsa).signingKey())).message).toMatch(/ed25519/);
  });
});
