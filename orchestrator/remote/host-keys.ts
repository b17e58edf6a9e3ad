import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { utils, type ParsedKey } from 'ssh2';
import { invalidInput } from '../errors';
import { Secret } from '../secret';

/**
 * SSH host keys the orchestrator generates and pins (invariant 5: never trust on first use).
 * Only ed25519: one algorithm to pin, one to offer in the handshake.
 */
export const HOST_KEY_TYPE = 'ssh-ed25519';

export interface HostKeyPair {
  /** OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), for cloud-init's `ssh_keys`. */
  readonly privateKey: Secret;
  /** OpenSSH public key line without comment: `ssh-ed25519 AAAA…`. */
  readonly publicKey: string;
}

export interface ParsedPublicKey {
  readonly type: typeof HOST_KEY_TYPE;
  /** The raw SSH wire-format key blob: what the server presents in the handshake. */
  readonly blob: Buffer;
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const sshString = (b: Buffer | string): Buffer => {
  // Stryker disable next-line ConditionalExpression,StringLiteral: equivalent, Buffer.from(buffer) copies it and Buffer.from(string, '') reads UTF-8
  const buf = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
  return Buffer.concat([u32(buf.length), buf]);
};

/**
 * A fresh ed25519 key pair in OpenSSH formats. Built from node:crypto rather than ssh2's
 * `utils.generateKeyPairSync('ed25519')`, which (ssh2 1.17) drops a leading zero byte of the public
 * key about once in 256 keys and so yields a key no server or client accepts.
 */
export const generateHostKeyPair = (): HostKeyPair => {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  // Stryker disable next-line StringLiteral: equivalent, a missing x or d fails the 32-byte check whatever string stands in
  const pub = Buffer.from(publicKey.export({ format: 'jwk' }).x ?? '', 'base64url');
  // Stryker disable next-line StringLiteral: equivalent, as above
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d ?? '', 'base64url');
  if (pub.length !== 32 || seed.length !== 32)
    throw new Error('node:crypto returned a malformed ed25519 key');
  const pubBlob = Buffer.concat([sshString(HOST_KEY_TYPE), sshString(pub)]);
  // openssh-key-v1, unencrypted: check ints, then type, public key, seed||public, empty comment, padding.
  const check = randomBytes(4);
  const secret = Buffer.concat([seed, pub]);
  const section = Buffer.concat([
    check,
    check,
    sshString(HOST_KEY_TYPE),
    sshString(pub),
    sshString(secret),
    sshString(''),
  ]);
  const padLen = (8 - (section.length % 8)) % 8;
  const padded = Buffer.concat([section, Buffer.from(Array.from({ length: padLen }, (_, i) => i + 1))]);
  const body = Buffer.concat([
    // Stryker disable next-line StringLiteral: equivalent, the magic is ASCII: UTF-8 (an empty encoding name) gives the same bytes
    Buffer.from('openssh-key-v1\0', 'latin1'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    u32(1),
    sshString(pubBlob),
    sshString(padded),
  ]);
  const wrapped = body.toString('base64').replace(/(.{70})/g, '$1\n');
  // Stryker disable next-line StringLiteral: equivalent for ed25519, whose 312 base64 characters never end a 70-character line
  const b64 = wrapped.replace(/\n$/, '');
  const pem = `-----BEGIN OPENSSH PRIVATE KEY-----\n${b64}\n-----END OPENSSH PRIVATE KEY-----\n`;
  for (const b of [seed, secret, section, padded, body]) b.fill(0);
  return { privateKey: new Secret(pem), publicKey: formatPublicKey(pubBlob) };
};

const readString = (buf: Buffer, at: number): { value: Buffer; next: number } | undefined => {
  // Stryker disable next-line EqualityOperator: equivalent, a length with nothing after it is an empty string, which parsePublicKey refuses either way
  if (at + 4 > buf.length) return undefined;
  const len = buf.readUInt32BE(at);
  // Stryker disable next-line ConditionalExpression,ArithmeticOperator: equivalent in parsePublicKey, whose k.next === blob.length and 32-byte checks refuse an overrun string anyway
  if (at + 4 + len > buf.length) return undefined;
  return { value: buf.subarray(at + 4, at + 4 + len), next: at + 4 + len };
};

/**
 * Parse an OpenSSH public key line (`ssh-ed25519 AAAA… [comment]`) and check that the blob is a
 * well-formed ed25519 key whose embedded type matches the declared one.
 */
export const parsePublicKey = (line: string, field = 'hostPublicKey'): ParsedPublicKey => {
  // One line: `type blob [comment]`, nothing that could smuggle a second key or a control character.
  if (typeof line !== 'string' || /[\x00-\x1f\x7f]/.test(line.trim()))
    throw invalidInput(field, `must be one line: an OpenSSH ${HOST_KEY_TYPE} public key`);
  const parts = line.trim().split(/\s+/);
  const [type, b64] = parts;
  if (type !== HOST_KEY_TYPE) throw invalidInput(field, `must be an OpenSSH ${HOST_KEY_TYPE} public key`);
  if (b64 === undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64))
    throw invalidInput(field, 'has no base64 key blob');
  const blob = Buffer.from(b64, 'base64');
  const t = readString(blob, 0);
  const k = t && readString(blob, t.next);
  if (
    !t ||
    !k ||
    t.value.toString('latin1') !== HOST_KEY_TYPE ||
    k.value.length !== 32 ||
    k.next !== blob.length
  )
    throw invalidInput(field, `key blob is not a valid ${HOST_KEY_TYPE} key`);
  return { type: HOST_KEY_TYPE, blob };
};

export const formatPublicKey = (blob: Buffer): string => `${HOST_KEY_TYPE} ${blob.toString('base64')}`;

/** OpenSSH-style fingerprint, `SHA256:<base64 without padding>`, as `ssh-keygen -lf` prints it. */
export const fingerprintSha256 = (publicKey: string | Buffer): string => {
  const blob = typeof publicKey === 'string' ? parsePublicKey(publicKey).blob : publicKey;
  // Stryker disable next-line Regex: equivalent, base64 of 32 bytes always ends in exactly one '='
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
};

/** Compare a presented key blob with a pinned one (constant time on equal lengths). */
export const sameKeyBlob = (a: Buffer, b: Buffer): boolean => a.length === b.length && timingSafeEqual(a, b);

/**
 * The OpenSSH public key of a private key (for `ssh_authorized_keys`), derived rather than
 * configured so the two can never disagree.
 */
export const publicKeyOfPrivate = (privateKey: Secret, field = 'privateKey'): string => {
  // ssh2 (1.17) parses public keys too, and returns undefined rather than an Error for an
  // openssh-key-v1 file that holds no key (found while mutation testing): both are refused here.
  const parsed = utils.parseKey(privateKey.reveal()) as ParsedKey | Error | undefined;
  if (parsed === undefined || parsed instanceof Error || !parsed.isPrivateKey())
    throw invalidInput(field, 'is not an unencrypted OpenSSH private key');
  return `${parsed.type} ${parsed.getPublicSSH().toString('base64')}`;
};
