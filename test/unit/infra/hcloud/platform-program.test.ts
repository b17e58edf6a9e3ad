import {
  platformProgram,
  platformStackConfig,
  parsePlatformSettings,
  SSH_KEY_NAME,
} from '../../../../orchestrator/infra/hcloud/platform-program';
import { programFor } from '../../../../orchestrator/infra/hcloud/stack-programs';
import { PLATFORM_STACK, PULUMI_PROJECT } from '../../../../orchestrator/infra/hcloud/stack-names';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { runProgramWithMocks } from '../../../support/fake-workspace';

const publicKey = `${generateHostKeyPair().publicKey} cortex`;

describe('platform program (pulumi mocks)', () => {
  it('declares the orchestrator SSH key once, through a provider with a raised poll interval', async () => {
    const config = platformStackConfig(
      parsePlatformSettings({ orchestratorPublicKey: publicKey, pollInterval: '9s' }),
    );
    const r = await runProgramWithMocks(programFor(PLATFORM_STACK), {
      project: PULUMI_PROJECT,
      stack: PLATFORM_STACK,
      config,
    });
    expect(r.resources.map((x) => x.type).sort()).toEqual([
      'hcloud:index/sshKey:SshKey',
      'pulumi:providers:hcloud',
    ]);
    const key = r.resources.find((x) => x.type === 'hcloud:index/sshKey:SshKey')!;
    const provider = r.resources.find((x) => x.type === 'pulumi:providers:hcloud')!;
    expect(key.inputs).toMatchObject({ name: SSH_KEY_NAME, publicKey });
    expect(provider.inputs).toMatchObject({ pollInterval: '9s', pollFunction: 'constant' });
    expect(provider.inputs.token).toBeUndefined();
    expect(r.outputs.sshKeyId).toEqual({ value: key.assignedId, secret: false });
    expect(programFor(PLATFORM_STACK)).toBe(platformProgram);
  });

  it.each([
    ['a private key', '-----BEGIN OPENSSH PRIVATE KEY-----', /must be an OpenSSH ssh-ed25519 public key/],
    // SSH pins only ed25519: another type is refused even when well formed.
    ['an RSA key', `ssh-rsa ${Buffer.from('\0\0\0\x07ssh-rsa').toString('base64')}`, /ssh-ed25519/],
    ['a truncated ed25519 blob', publicKey.slice(0, 40), /not a valid ssh-ed25519 key/],
  ])('refuses %s as the public key, naming the key', (_what, orchestratorPublicKey, why) => {
    const attempt = () => parsePlatformSettings({ orchestratorPublicKey });
    expect(attempt).toThrow(/^stack config cortex:orchestratorPublicKey: /);
    expect(attempt).toThrow(why);
  });

  it('defaults the poll interval and rejects one that is not a duration', () => {
    expect(parsePlatformSettings({ orchestratorPublicKey: publicKey }).pollInterval).toBe('5s');
    expect(() => parsePlatformSettings({ orchestratorPublicKey: publicKey, pollInterval: '5 min' })).toThrow(
      /cortex:pollInterval: must be a duration/,
    );
  });
});
