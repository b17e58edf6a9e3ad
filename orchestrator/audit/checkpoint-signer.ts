import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { OrchestratorError } from '../errors';

/**
 * The ed25519 key that signs audit checkpoints, and the signed envelope. The key lives outside the
 * database (a 0600 file under the state directory), so whoever owns the database can rewrite the
 * audit log but cannot sign a checkpoint that agrees with the rewrite.
 */
export const CHECKPOINT_FORMAT = 'cortex.audit-checkpoint.v1';

export interface CheckpointSigningKey {
  /** First 16 hex digits of SHA-256 over the public key (SPKI DER): names the key in checkpoints. */
  readonly keyId: string;
  readonly publicKey: KeyObject;
  sign(data: Buffer): Buffer;
}

/** Port: where the checkpoint key comes from. */
export interface CheckpointKeySource {
  /** The signing key; the file adapter creates it (0600) on first use. */
  signingKey(): Promise<CheckpointSigningKey>;
  /** The key checkpoints are verified with; never creates one. */
  verifyKey(): Promise<KeyObject>;
}

export const keyIdOf = (publicKey: KeyObject): string =>
  createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);

const fromPrivateKey = (privateKey: KeyObject): CheckpointSigningKey => {
  if (privateKey.asymmetricKeyType !== 'ed25519')
    throw new OrchestratorError('config_invalid', 'the audit checkpoint key must be an ed25519 key');
  const publicKey = createPublicKey(privateKey);
  return { keyId: keyIdOf(publicKey), publicKey, sign: (data) => sign(null, data, privateKey) };
};

/** A key held in memory (tests, or an adapter that fetches it from a KMS). */
export const makeMemoryCheckpointKey = (privateKey?: KeyObject): CheckpointKeySource => {
  const key = fromPrivateKey(privateKey ?? generateKeyPairSync('ed25519').privateKey);
  return { signingKey: async () => key, verifyKey: async () => key.publicKey };
};

const errnoOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException).code;

/**
 * The file adapter: a PKCS#8 PEM file, owned by this process's user, mode 0600 or stricter (a
 * wider mode, a symbolic link or another owner is refused, never repaired).
 */
export const makeFileCheckpointKey = (file: string): CheckpointKeySource => {
  const where = `AUDIT_CHECKPOINT_KEY_FILE (${file})`;

  const read = async (): Promise<CheckpointSigningKey | null> => {
    let fh;
    try {
      // O_NOFOLLOW: the mode checked is the mode of the file read, not of a link's target.
      fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT') return null;
      const why = code === 'ELOOP' ? 'is a symbolic link' : `cannot be opened (${code})`;
      throw new OrchestratorError('config_invalid', `${where} ${why}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new OrchestratorError('config_invalid', `${where} is not a regular file`);
      if ((st.mode & 0o077) !== 0)
        throw new OrchestratorError(
          'config_invalid',
          `${where} has mode ${(st.mode & 0o777).toString(8)}; it must not be readable by group or others (chmod 600)`,
        );
      const uid = process.geteuid?.();
      if (uid !== undefined && st.uid !== uid)
        throw new OrchestratorError(
          'config_invalid',
          `${where} is owned by uid ${st.uid}, not by this process`,
        );
      const pem = await fh.readFile();
      try {
        return fromPrivateKey(createPrivateKey({ key: pem, format: 'pem' }));
      } catch (err) {
        if (err instanceof OrchestratorError) throw err;
        throw new OrchestratorError('config_invalid', `${where} does not hold a PEM private key`);
      } finally {
        pem.fill(0);
      }
    } finally {
      await fh.close();
    }
  };

  const create = async (): Promise<void> => {
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    const { privateKey } = generateKeyPairSync('ed25519');
    let fh;
    try {
      // O_EXCL: two processes creating it at once end with one key, the loser reads the winner's.
      fh = await open(
        file,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') return;
      throw new OrchestratorError('config_invalid', `${where} cannot be created (${errnoOf(err)})`);
    }
    try {
      await fh.writeFile(privateKey.export({ type: 'pkcs8', format: 'pem' }));
      await fh.sync();
    } finally {
      await fh.close();
    }
  };

  return {
    async signingKey() {
      const existing = await read();
      if (existing) return existing;
      await create();
      const created = await read();
      if (!created) throw new OrchestratorError('config_invalid', `${where} vanished after it was created`);
      return created;
    },
    async verifyKey() {
      const key = await read();
      if (!key)
        throw new OrchestratorError(
          'config_invalid',
          `${where} does not exist: checkpoints cannot be verified without the key that signed them`,
        );
      return key.publicKey;
    },
  };
};

// ---- the signed envelope -------------------------------------------------------------------------

const isoTime = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
const chainHead = z.strictObject({
  chain: z.uuid(),
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  at: isoTime,
});
export const checkpointPayload = z.strictObject({
  format: z.literal(CHECKPOINT_FORMAT),
  at: isoTime,
  chains: z.array(chainHead),
});
export type CheckpointPayload = z.output<typeof checkpointPayload>;
export type SignedChainHead = z.output<typeof chainHead>;

const envelope = z.strictObject({
  format: z.literal(CHECKPOINT_FORMAT),
  key_id: z.string().regex(/^[0-9a-f]{16}$/),
  // The exact bytes signed, kept as a string: nothing is re-serialized before verifying.
  payload: z.string(),
  signature: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/),
});

/** The stored form of a checkpoint: a JSON envelope around the signed payload. */
export const signCheckpoint = (payload: CheckpointPayload, key: CheckpointSigningKey): string => {
  const text = JSON.stringify(checkpointPayload.parse(payload));
  const signature = key.sign(Buffer.from(text, 'utf8')).toString('base64');
  return `${JSON.stringify({ format: CHECKPOINT_FORMAT, key_id: key.keyId, payload: text, signature }, null, 2)}\n`;
};

export type OpenedCheckpoint =
  | { readonly ok: true; readonly payload: CheckpointPayload }
  | { readonly ok: false; readonly reason: string };

/** Checks the signature first and only then reads the payload; never throws on bad input. */
export const openCheckpoint = (body: string, publicKey: KeyObject): OpenedCheckpoint => {
  let parsed;
  try {
    parsed = envelope.safeParse(JSON.parse(body));
  } catch {
    return { ok: false, reason: 'is not JSON' };
  }
  if (!parsed.success) return { ok: false, reason: 'is not a checkpoint envelope' };
  const e = parsed.data;
  const expectedKeyId = keyIdOf(publicKey);
  if (e.key_id !== expectedKeyId)
    return { ok: false, reason: `was signed by key ${e.key_id}, not by this key (${expectedKeyId})` };
  if (!verify(null, Buffer.from(e.payload, 'utf8'), publicKey, Buffer.from(e.signature, 'base64')))
    return { ok: false, reason: 'has a signature that does not verify' };
  let payload;
  try {
    payload = checkpointPayload.safeParse(JSON.parse(e.payload));
  } catch {
    return { ok: false, reason: 'has a signed payload that is not JSON' };
  }
  if (!payload.success) return { ok: false, reason: 'has a signed payload of an unknown shape' };
  return { ok: true, payload: payload.data };
};
