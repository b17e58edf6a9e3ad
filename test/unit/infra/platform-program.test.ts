import {
  platformProgram,
  platformStackConfig,
  parsePlatformSettings,
  SSH_KEY_NAME,
} from '../../../orchestrator/infra/platform-program';
import { programFor } from '../../../orchestrator/infra/stack-programs';
import { PLATFORM_STACK, PULUMI_PROJECT } from '../../../orchestrator/infra/stack-names';
import { runProgramWithMocks } from '../../support/fake-workspace';

const publicKey = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrchestratorKeyForTests00000000000000 cortex';

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
    expect(provider.inputs).toMatchObject({ pollInterval: '9s' });
    expect(provider.inputs.token).toBeUndefined();
    expect(r.outputs.sshKeyId).toEqual({ value: key.assignedId, secret: false });
    expect(programFor(PLATFORM_STACK)).toBe(platformProgram);
  });

  it('refuses a private key or garbage as the public key', () => {
    expect(() =>
      parsePlatformSettings({ orchestratorPublicKey: '-----BEGIN OPENSSH PRIVATE KEY-----' }),
    ).toThrow(/cortex:orchestratorPublicKey/);
  });
});
