import { spawnSync } from 'node:child_process';
import path from 'node:path';
import {
  backendDirectory,
  cliEnvironment,
  defaultBackendUrl,
} from '../../../../orchestrator/infra/hcloud/workspace';
import { canary } from '../../../support/canary';

describe('Pulumi workspace (issue 13 item 9)', () => {
  it('file://~ backends resolve under the home directory, as the CLI reads them', () => {
    expect(backendDirectory('file://~', '/home/w')).toBe('/home/w');
    expect(backendDirectory('file://~/pulumi/state', '/home/w')).toBe('/home/w/pulumi/state');
    expect(backendDirectory('file:///var/lib/cortex/pulumi', '/home/w')).toBe('/var/lib/cortex/pulumi');
    expect(backendDirectory(defaultBackendUrl('/srv/state'))).toBe(
      path.join('/srv/state', 'pulumi', 'backend'),
    );
  });

  it('the CLI sees only what it needs of the worker environment, even though the SDK merges it all', () => {
    const secret = canary('other');
    const worker = {
      PATH: process.env.PATH,
      HOME: '/root',
      SUPABASE_SERVICE_ROLE_KEY: secret,
      DATABASE_URL: `postgres://u:${secret}@db/x`,
      AWS_REGION: 'eu-central-1',
    };
    const env = cliEnvironment(worker, { HCLOUD_TOKEN: 'h'.repeat(64), PULUMI_BACKEND_URL: 'file:///x' });
    expect(env).toEqual({
      PATH: process.env.PATH,
      HOME: '/root',
      SUPABASE_SERVICE_ROLE_KEY: undefined,
      DATABASE_URL: undefined,
      AWS_REGION: 'eu-central-1',
      HCLOUD_TOKEN: 'h'.repeat(64),
      PULUMI_BACKEND_URL: 'file:///x',
    });
    // What execa (extendEnv) hands to spawn: the worker's environment, then ours; masked ones vanish.
    const seen = spawnSync('env', [], { env: { ...worker, ...env }, encoding: 'utf8' }).stdout;
    expect(seen).not.toContain(secret);
    expect(seen).toContain('HCLOUD_TOKEN=');
    // Control: without the mask the secret reaches the child.
    expect(spawnSync('env', [], { env: worker, encoding: 'utf8' }).stdout).toContain(secret);
  });
});
