import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { makeSshKeySource } from '../../../orchestrator/remote/ssh-key-source';
import { Secret } from '../../../orchestrator/secret';
import { rejection } from '../../support/rejection';

/** Each refusal of the key source with its exact message (mutation testing found them unchecked). */
describe('SSH key source refusals, exactly', () => {
  let dir: string;
  const pair = generateHostKeyPair();
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sks-msg-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const file = (content: string, mode = 0o600): string => {
    const f = join(dir, 'id');
    writeFileSync(f, content, { mode });
    chmodSync(f, mode);
    return f;
  };
  const message = async (f: string): Promise<[string, string]> => {
    const err = await rejection(makeSshKeySource({ source: 'file', file: f }).load());
    return [err.code, err.message];
  };

  it('names a missing file, a link and a directory', async () => {
    const missing = join(dir, 'nope');
    expect(await message(missing)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${missing}) does not exist`,
    ]);
    const link = join(dir, 'link');
    symlinkSync(file(pair.privateKey.reveal()), link);
    expect(await message(link)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${link}) is a symbolic link`,
    ]);
    const d = join(dir, 'd');
    mkdirSync(d, { mode: 0o700 });
    expect(await message(d)).toEqual(['config_invalid', `SSH_PRIVATE_KEY_FILE (${d}) is not a regular file`]);
    // another open failure names its errno
    const deep = join(dir, 'id', 'below');
    expect(await message(deep)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${deep}) cannot be opened (ENOTDIR)`,
    ]);
  });

  it('names a wide mode with the fix, and a file that holds no private key or a public one', async () => {
    const wide = file(pair.privateKey.reveal(), 0o640);
    expect(await message(wide)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${wide}) has mode 640; it must not be readable by group or others (chmod 600)`,
    ]);
    const junk = file('not a key at all');
    expect(await message(junk)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${junk}) does not hold an unencrypted OpenSSH private key`,
    ]);
    const pub = file(pair.publicKey);
    expect(await message(pub)).toEqual([
      'config_invalid',
      `SSH_PRIVATE_KEY_FILE (${pub}) holds a public key; the private key is needed`,
    ]);
    // 0700 is no wider for group and others than 0600
    expect(
      (
        await makeSshKeySource({ source: 'file', file: file(pair.privateKey.reveal(), 0o700) }).load()
      ).reveal(),
    ).toBe(pair.privateKey.reveal());
  });

  it('names the vault secret it read', async () => {
    const src = (value: string) =>
      makeSshKeySource({
        source: 'vault',
        secretName: 'orchestrator-ssh-key',
        readPlatformSecret: async () => new Secret(value),
      });
    const junk = await rejection(src('x'.repeat(40)).load());
    expect([junk.code, junk.message]).toEqual([
      'config_invalid',
      'vault secret orchestrator-ssh-key does not hold an unencrypted OpenSSH private key',
    ]);
    const pub = await rejection(src(pair.publicKey).load());
    expect(pub.message).toBe(
      'vault secret orchestrator-ssh-key holds a public key; the private key is needed',
    );
  });
});
