import { chmodSync, chownSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { makeSshKeySource } from '../../../orchestrator/remote/ssh-key-source';
import { Secret } from '../../../orchestrator/secret';

describe('orchestrator SSH key source', () => {
  let dir: string;
  const generated = generateHostKeyPair();
  const pair = { private: generated.privateKey.reveal(), public: generated.publicKey };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sks-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const keyFile = (mode: number, content = pair.private): string => {
    const f = join(dir, 'id');
    writeFileSync(f, content, { mode });
    chmodSync(f, mode);
    return f;
  };

  const rejection = async (p: Promise<unknown>): Promise<Error> => {
    try {
      await p;
    } catch (err) {
      expect(isOrchestratorError(err) && err.code).toBe('config_invalid');
      return err as Error;
    }
    throw new Error('expected config_invalid');
  };

  it('loads a 0600 file as a Secret', async () => {
    const key = await makeSshKeySource({ source: 'file', file: keyFile(0o600) }).load();
    expect(key.reveal()).toBe(pair.private);
    expect(JSON.stringify({ key })).not.toContain('PRIVATE');
  });

  it('accepts 0400', async () => {
    await expect(makeSshKeySource({ source: 'file', file: keyFile(0o400) }).load()).resolves.toBeInstanceOf(
      Secret,
    );
  });

  // Every group and other bit, alone, and a few combinations.
  it.each([0o601, 0o602, 0o604, 0o610, 0o620, 0o640, 0o644, 0o660, 0o777])(
    'refuses mode %o, telling how to fix it',
    async (mode) => {
      const err = await rejection(makeSshKeySource({ source: 'file', file: keyFile(mode) }).load());
      expect(err.message).toMatch(/chmod 600/);
      expect(err.message).toContain(`has mode ${mode.toString(8)};`);
      expect(err.message).not.toContain('PRIVATE KEY');
    },
  );

  // chown needs root (CI runs as root); the owner check compares with the process's own uid.
  (process.geteuid?.() === 0 ? it : it.skip)('refuses a 0600 key file another user owns', async () => {
    const f = keyFile(0o600);
    await expect(makeSshKeySource({ source: 'file', file: f }).load()).resolves.toBeInstanceOf(Secret);
    chownSync(f, 65534, 65534);
    const err = await rejection(makeSshKeySource({ source: 'file', file: f }).load());
    expect(err.message).toBe(
      `SSH_PRIVATE_KEY_FILE (${f}) is owned by uid 65534, not by this process (uid 0)`,
    );
  });

  it('refuses a symlink, a directory and a missing file', async () => {
    const target = keyFile(0o600);
    symlinkSync(target, join(dir, 'link'));
    await rejection(makeSshKeySource({ source: 'file', file: join(dir, 'link') }).load());
    mkdirSync(join(dir, 'd'), { mode: 0o700 });
    await rejection(makeSshKeySource({ source: 'file', file: join(dir, 'd') }).load());
    await rejection(makeSshKeySource({ source: 'file', file: join(dir, 'nope') }).load());
  });

  it('refuses a file that holds no private key, without quoting it', async () => {
    const err = await rejection(
      makeSshKeySource({ source: 'file', file: keyFile(0o600, 'hunter2-not-a-key') }).load(),
    );
    expect(err.message).not.toContain('hunter2');
    await rejection(makeSshKeySource({ source: 'file', file: keyFile(0o600, pair.public) }).load());
  });

  it('reads the vault secret through the injected reader, by name', async () => {
    const names: string[] = [];
    const src = makeSshKeySource({
      source: 'vault',
      secretName: 'orchestrator-ssh-key',
      readPlatformSecret: async (name) => {
        names.push(name);
        return new Secret(pair.private);
      },
    });
    expect((await src.load()).reveal()).toBe(pair.private);
    expect(names).toEqual(['orchestrator-ssh-key']);
  });

  it('refuses a vault secret that is not a private key, without quoting it', async () => {
    const src = makeSshKeySource({
      source: 'vault',
      secretName: 'k',
      readPlatformSecret: async () => new Secret('sk-not-a-key-123'),
    });
    const err = await rejection(src.load());
    expect(err.message).not.toContain('sk-not-a-key');
  });
});
