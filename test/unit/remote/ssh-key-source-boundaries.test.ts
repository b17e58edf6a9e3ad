import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { makeSshKeySource } from '../../../orchestrator/remote/ssh-key-source';
import { Secret } from '../../../orchestrator/secret';
import { rejection } from '../../support/rejection';

/** The OpenSSH armour line, built here so no key-shaped literal sits in the repository. */
const armour = (edge: 'BEGIN' | 'END'): string => `-----${edge} OPENSSH ${'PRIVATE'} KEY-----`;
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const str = (s: string): Buffer => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
/** A well-formed openssh-key-v1 file that holds no key (ssh2 parses it as undefined). */
const NO_KEY_PEM = `${armour('BEGIN')}\n${Buffer.concat([
  Buffer.from('openssh-key-v1\0', 'latin1'),
  str('none'),
  str('none'),
  u32(0),
  u32(0),
]).toString('base64')}\n${armour('END')}\n`;

/**
 * The SSH key source at the edges mutation testing found unchecked: what ssh2 parses as no key, an
 * encrypted key, the zeroing of the bytes read and the file descriptor's release.
 */
describe('SSH key source boundaries', () => {
  let dir: string;
  const pair = generateHostKeyPair();
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sks-b-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const file = (content: string, mode = 0o600): string => {
    const f = join(dir, 'id');
    rmSync(f, { force: true });
    writeFileSync(f, content, { mode });
    chmodSync(f, mode);
    return f;
  };
  const fromFile = (f: string) => makeSshKeySource({ source: 'file', file: f }).load();
  const fromVault = (value: string) =>
    makeSshKeySource({
      source: 'vault',
      secretName: 'orchestrator-ssh-key',
      readPlatformSecret: async () => new Secret(value),
    }).load();

  it('an openssh-key-v1 file holding no key is config_invalid, not a TypeError, from a file and from the vault', async () => {
    const f = file(NO_KEY_PEM);
    const a = await rejection(fromFile(f));
    expect([a.code, a.message]).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${f}) does not hold an unencrypted OpenSSH private key`,
    ]);
    const b = await rejection(fromVault(NO_KEY_PEM));
    expect([b.code, b.message]).toEqual([
      'config_invalid',
      'vault secret orchestrator-ssh-key does not hold an unencrypted OpenSSH private key',
    ]);
    // the positive control: the same path takes a real key
    expect((await fromVault(pair.privateKey.reveal())).reveal()).toBe(pair.privateKey.reveal());
  });

  it('refuses a passphrase-protected key, and takes the same key unprotected', async () => {
    const keyFile = join(dir, 'enc');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'a passphrase', '-C', '', '-f', keyFile]);
    const enc = readFileSync(keyFile, 'utf8');
    expect((await rejection(fromFile(file(enc)))).message).toBe(
      `SSH_PRIVATE_KEY_FILE (${join(dir, 'id')}) does not hold an unencrypted OpenSSH private key`,
    );
    execFileSync('ssh-keygen', ['-q', '-p', '-P', 'a passphrase', '-N', '', '-f', keyFile]);
    const plain = readFileSync(keyFile, 'utf8');
    expect((await fromFile(file(plain))).reveal()).toBe(plain);
  });

  it('zeroes the bytes it read once the key is copied into the Secret', async () => {
    const fill = jest.spyOn(Buffer.prototype, 'fill');
    try {
      const key = pair.privateKey.reveal();
      expect((await fromFile(file(key))).reveal()).toBe(key);
      const zeroed = fill.mock.contexts.filter((_, i) => fill.mock.calls[i]?.[0] === 0) as Buffer[];
      const read = zeroed.filter((b) => b.length === Buffer.byteLength(key));
      expect(read).toHaveLength(1);
      expect(read[0]?.every((x) => x === 0)).toBe(true);
    } finally {
      fill.mockRestore();
    }
  });

  it('leaves no file descriptor open, whether it loads or refuses', async () => {
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const before = fds();
    await fromFile(file(pair.privateKey.reveal()));
    await rejection(fromFile(file(pair.privateKey.reveal(), 0o640)));
    await rejection(fromFile(file('not a key at all')));
    await rejection(fromFile(dir));
    expect(fds()).toBe(before);
  });
});
