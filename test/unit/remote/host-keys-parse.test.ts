import * as crypto from 'node:crypto';

/** Which half of the next generated key node:crypto should return malformed (see the last test). */
let mockMalformed: 'public' | 'seed' | undefined;
jest.mock('node:crypto', () => {
  const actual = jest.requireActual<typeof import('node:crypto')>('node:crypto');
  return {
    ...actual,
    generateKeyPairSync: (type: 'ed25519') => {
      const k = actual.generateKeyPairSync(type);
      if (mockMalformed === undefined) return k;
      const which = mockMalformed;
      const pub = k.publicKey.export({ format: 'jwk' });
      const priv = k.privateKey.export({ format: 'jwk' });
      return {
        publicKey: {
          export: () => (which === 'public' ? { ...pub, x: Buffer.alloc(31).toString('base64url') } : pub),
        },
        privateKey: { export: () => (which === 'seed' ? { ...priv, d: undefined } : priv) },
      };
    },
  };
});
import type { OrchestratorError } from '../../../orchestrator/errors';
import {
  fingerprintSha256,
  formatPublicKey,
  generateHostKeyPair,
  parsePublicKey,
  publicKeyOfPrivate,
  sameKeyBlob,
} from '../../../orchestrator/remote/host-keys';
import { Secret } from '../../../orchestrator/secret';

/** The OpenSSH armour line, built here so no key-shaped literal sits in the repository. */
const armour = (edge: 'BEGIN' | 'END'): string => `-----${edge} OPENSSH ${'PRIVATE'} KEY-----`;

/**
 * The public-key parser's every refusal, exactly, and the wire format at its byte boundaries
 * (mutation testing found the bounds and messages unchecked). ssh-keygen agreement is in
 * host-keys.test.ts.
 */
const refusal = (fn: () => unknown): Pick<OrchestratorError, 'code' | 'field' | 'message'> => {
  try {
    fn();
  } catch (err) {
    const e = err as OrchestratorError;
    return { code: e.code, field: e.field, message: e.message };
  }
  throw new Error('expected a refusal');
};
const invalid = (field: string, message: string) => ({
  code: 'invalid_input',
  field,
  message: `${field}: ${message}`,
});

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const str = (b: Buffer | string): Buffer => {
  const buf = Buffer.from(b);
  return Buffer.concat([u32(buf.length), buf]);
};
const line = (blob: Buffer): string => `ssh-ed25519 ${blob.toString('base64')}`;
const KEY = Buffer.alloc(32, 7);
const GOOD = Buffer.concat([str('ssh-ed25519'), str(KEY)]);
const NOT_ONE_LINE = 'must be one line: an OpenSSH ssh-ed25519 public key';
const BAD_BLOB = 'key blob is not a valid ssh-ed25519 key';

describe('parsePublicKey', () => {
  it('takes a well-formed key, with or without a comment and surrounding blanks', () => {
    expect(parsePublicKey(line(GOOD))).toEqual({ type: 'ssh-ed25519', blob: GOOD });
    expect(parsePublicKey(`  ${line(GOOD)} me@host \n`).blob.equals(GOOD)).toBe(true);
    expect(parsePublicKey(`ssh-ed25519    ${GOOD.toString('base64')}`).blob.equals(GOOD)).toBe(true);
  });

  it('refuses what is not one line of text, naming the field it was given', () => {
    expect(refusal(() => parsePublicKey(42 as unknown as string))).toEqual(
      invalid('hostPublicKey', NOT_ONE_LINE),
    );
    expect(refusal(() => parsePublicKey(`${line(GOOD)}\n${line(GOOD)}`, 'hostKey.publicKey'))).toEqual(
      invalid('hostKey.publicKey', NOT_ONE_LINE),
    );
    for (const c of ['\0', '\t', '\u001f', '\u007f', '\r'])
      expect(refusal(() => parsePublicKey(`ssh-ed25519 ${GOOD.toString('base64')}${c}x y`))).toEqual(
        invalid('hostPublicKey', NOT_ONE_LINE),
      );
  });

  it('refuses another key type, and a missing or malformed base64 blob', () => {
    expect(refusal(() => parsePublicKey(`ssh-rsa ${GOOD.toString('base64')}`))).toEqual(
      invalid('hostPublicKey', 'must be an OpenSSH ssh-ed25519 public key'),
    );
    expect(refusal(() => parsePublicKey(''))).toEqual(
      invalid('hostPublicKey', 'must be an OpenSSH ssh-ed25519 public key'),
    );
    const b64 = GOOD.toString('base64');
    for (const bad of ['ssh-ed25519', `ssh-ed25519 *${b64}`, `ssh-ed25519 ${b64}*`, `ssh-ed25519 =${b64}`])
      expect(refusal(() => parsePublicKey(bad))).toEqual(invalid('hostPublicKey', 'has no base64 key blob'));
    expect(refusal(() => parsePublicKey(`ssh-ed25519 ${b64.replace(/=*$/, '')}===`))).toEqual(
      invalid('hostPublicKey', 'has no base64 key blob'),
    );
  });

  it('refuses a blob that is truncated, too long, of another type or with a key of the wrong size', () => {
    const bad = [
      Buffer.alloc(0),
      Buffer.from([0, 0, 0]), // not even a length
      GOOD.subarray(0, 4 + 11), // type only
      GOOD.subarray(0, 4 + 11 + 3), // key length cut
      GOOD.subarray(0, GOOD.length - 1), // key one byte short of its length
      Buffer.concat([GOOD, Buffer.from([0])]), // a trailing byte
      Buffer.concat([str('ssh-ed25518'), str(KEY)]),
      Buffer.concat([str('ssh-ed25519 '), str(KEY)]),
      Buffer.concat([str('ssh-ed25519'), str(Buffer.alloc(31, 7))]),
      Buffer.concat([str('ssh-ed25519'), str(Buffer.alloc(33, 7))]),
      Buffer.concat([str('ssh-ed25519'), u32(0)]), // a zero-length key
      Buffer.concat([u32(0xffffffff), Buffer.from('ssh-ed25519')]),
    ];
    for (const blob of bad.filter((b) => b.length > 0))
      expect(refusal(() => parsePublicKey(line(blob)))).toEqual(invalid('hostPublicKey', BAD_BLOB));
  });

  it('reads base64 with one or two padding characters as base64, and refuses the blob it holds', () => {
    // a valid ed25519 blob is 51 bytes, never padded: 50 and 49 bytes end in `=` and `==`
    for (const [blob, pad] of [
      [GOOD.subarray(0, 50), '='],
      [GOOD.subarray(0, 49), '=='],
    ] as const) {
      expect(line(blob).endsWith(`${pad}`) && !line(blob).endsWith(`${pad}=`)).toBe(true);
      expect(refusal(() => parsePublicKey(line(blob)))).toEqual(invalid('hostPublicKey', BAD_BLOB));
    }
  });
});

describe('fingerprints, blobs and derived keys', () => {
  it('fingerprints a line and its blob alike, without base64 padding', () => {
    const fp = fingerprintSha256(line(GOOD));
    const expected = crypto.createHash('sha256').update(GOOD).digest('base64').replace(/=+$/, '');
    expect(fp).toBe(`SHA256:${expected}`);
    expect(fingerprintSha256(GOOD)).toBe(fp);
    expect(fp).not.toContain('=');
    expect(formatPublicKey(GOOD)).toBe(line(GOOD));
  });

  it('compares blobs by content and length, without throwing on a length mismatch', () => {
    const other = Buffer.from(GOOD);
    expect(sameKeyBlob(GOOD, other)).toBe(true);
    other.writeUInt8(other.readUInt8(other.length - 1) ^ 1, other.length - 1);
    expect(sameKeyBlob(GOOD, other)).toBe(false);
    expect(sameKeyBlob(GOOD, GOOD.subarray(0, GOOD.length - 1))).toBe(false);
    expect(sameKeyBlob(Buffer.alloc(0), Buffer.alloc(0))).toBe(true);
  });

  it('derives the public key of a private key, and refuses anything else by field', () => {
    const pair = generateHostKeyPair();
    expect(publicKeyOfPrivate(pair.privateKey)).toBe(pair.publicKey);
    expect(refusal(() => publicKeyOfPrivate(new Secret('not a key')))).toEqual(
      invalid('privateKey', 'is not an unencrypted OpenSSH private key'),
    );
    expect(refusal(() => publicKeyOfPrivate(new Secret(''), 'orchestratorKey'))).toEqual(
      invalid('orchestratorKey', 'is not an unencrypted OpenSSH private key'),
    );
    // ssh2 parses a public key line as a key, and an openssh-key-v1 file holding no key as nothing
    expect(refusal(() => publicKeyOfPrivate(new Secret(pair.publicKey)))).toEqual(
      invalid('privateKey', 'is not an unencrypted OpenSSH private key'),
    );
    const noKey = Buffer.concat([
      Buffer.from('openssh-key-v1\0', 'latin1'),
      str('none'),
      str('none'),
      u32(0),
      u32(0),
    ]);
    const noKeyPem = `${armour('BEGIN')}\n${noKey.toString('base64')}\n${armour('END')}\n`;
    expect(refusal(() => publicKeyOfPrivate(new Secret(noKeyPem)))).toEqual(
      invalid('privateKey', 'is not an unencrypted OpenSSH private key'),
    );
  });
});

describe('generateHostKeyPair', () => {
  it('writes the PEM body in lines of exactly 70 base64 characters, the last one shorter', () => {
    const pem = generateHostKeyPair().privateKey.reveal();
    const lines = pem.split('\n');
    expect(lines[0]).toBe(armour('BEGIN'));
    expect(lines.at(-2)).toBe(armour('END'));
    expect(lines.at(-1)).toBe('');
    const body = lines.slice(1, -2);
    expect(body.slice(0, -1).every((l) => l.length === 70)).toBe(true);
    expect(body.at(-1)!.length).toBeGreaterThan(0);
    expect(body.at(-1)!.length).toBeLessThanOrEqual(70);
    // the decoded body: magic, no cipher, no KDF, one key, the public blob, a padded private section
    const raw = Buffer.from(body.join(''), 'base64');
    expect(raw.subarray(0, 15).toString('latin1')).toBe('openssh-key-v1\0');
    expect(raw.subarray(15, 15 + 4 + 4 + 4 + 4 + 4 + 4)).toEqual(
      Buffer.concat([str('none'), str('none'), u32(0), u32(1)]),
    );
    const pubLen = raw.readUInt32BE(39);
    const pubBlob = raw.subarray(43, 43 + pubLen);
    expect(line(pubBlob)).toBe(generateHostKeyPairPublic(pem));
    const sectionLen = raw.readUInt32BE(43 + pubLen);
    const section = raw.subarray(47 + pubLen, 47 + pubLen + sectionLen);
    expect(47 + pubLen + sectionLen).toBe(raw.length);
    expect(section.length % 8).toBe(0);
    expect(section.readUInt32BE(0)).toBe(section.readUInt32BE(4)); // the two check ints agree
    // padding 1, 2, 3, … after the empty comment
    const afterComment = 8 + (4 + 11) + (4 + 32) + (4 + 64) + 4;
    const pad = section.subarray(afterComment);
    expect([...pad]).toEqual(Array.from({ length: pad.length }, (_, i) => i + 1));
    expect(pad.length).toBeLessThan(8);
  });

  it('zeroes its copies of the seed and of the private sections before returning', () => {
    const fill = jest.spyOn(Buffer.prototype, 'fill');
    try {
      const pem = generateHostKeyPair().privateKey.reveal();
      const zeroed = fill.mock.contexts.filter((_, i) => fill.mock.calls[i]?.[0] === 0) as Buffer[];
      // seed, seed||public, the private section, the padded section, the whole body
      expect(zeroed.map((b) => b.length)).toEqual([32, 64, 131, 136, 234]);
      for (const b of zeroed) expect(b.every((x) => x === 0)).toBe(true);
      // the PEM was written before the zeroing: its body is not zeros
      expect(
        Buffer.from(pem.split('\n').slice(1, -2).join(''), 'base64')
          .subarray(-136)
          .some((x) => x !== 0),
      ).toBe(true);
    } finally {
      fill.mockRestore();
    }
  });

  it('refuses a key node:crypto returned malformed', () => {
    try {
      mockMalformed = 'public';
      expect(() => generateHostKeyPair()).toThrow('node:crypto returned a malformed ed25519 key');
      mockMalformed = 'seed';
      expect(() => generateHostKeyPair()).toThrow('node:crypto returned a malformed ed25519 key');
    } finally {
      mockMalformed = undefined;
    }
  });
});

/** The public line derived from a PEM with ssh2's parser, for cross-checking the decoded blob. */
const generateHostKeyPairPublic = (pem: string): string => publicKeyOfPrivate(new Secret(pem));
