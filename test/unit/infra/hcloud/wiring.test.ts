import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { loadConfig } from '../../../../orchestrator/config';
import { isOrchestratorError } from '../../../../orchestrator/errors';
import { makeLogger } from '../../../../orchestrator/log';
import { makeHcloudFromConfig } from '../../../../orchestrator/infra/hcloud/wiring';
import { PULUMI_PROJECT } from '../../../../orchestrator/infra/hcloud/stack-names';

// The real LocalWorkspace adapter, as far as it goes without the Pulumi CLI: the project file,
// the backend folder, and the SDK's own error for a missing CLI mapped to a plain message.
describe('hcloud wiring with the real Automation API adapter', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'cortex-pulumi-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prepares the work dir and backend, and reports a missing CLI as a config error', async () => {
    const config = loadConfig({ CORTEX_STATE_DIR: dir, PULUMI_CONFIG_PASSPHRASE: 'test-only' });
    const { hosts } = await makeHcloudFromConfig(config, makeLogger({ level: 'silent' }));
    expect(hosts.name).toBe('hcloud');
    const project = YAML.parse(await readFile(path.join(dir, 'pulumi', 'work', 'Pulumi.yaml'), 'utf8')) as {
      name: string;
    };
    expect(project.name).toBe(PULUMI_PROJECT);
    expect((await stat(path.join(dir, 'pulumi', 'backend'))).mode & 0o777).toBe(0o700);

    const savedPath = process.env.PATH;
    process.env.PATH = path.join(dir, 'no-such-bin');
    try {
      const err: unknown = await hosts.list().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isOrchestratorError(err) && err.code).toBe('config_invalid');
      expect((err as Error).message).toContain('Pulumi CLI is not on PATH');
    } finally {
      process.env.PATH = savedPath;
    }
  });
});
