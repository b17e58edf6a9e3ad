import { runCli } from '../../../orchestrator/cli/cortexctl';
import { canary } from '../../support/canary';

/** The pipeline's CLI commands: what they refuse before touching anything, in plain words. */
const cli = async (argv: string[], readSecret?: (p: string) => Promise<string>) => {
  let out = '';
  const code = await runCli(argv, {
    env: { LOG_LEVEL: 'silent' },
    out: (t) => void (out += t),
    ...(readSecret ? { readSecret } : {}),
  });
  return { code, out };
};

describe('cortexctl pipeline commands', () => {
  it('lists them in the help', async () => {
    const { code, out } = await cli(['help']);
    expect(code).toBe(0);
    for (const c of ['orgs', 'secrets', 'deploy', 'status', 'list', 'retry', 'destroy', 'worker'])
      expect(out).toMatch(new RegExp(`^  ${c} `, 'm'));
  });

  it('a malformed --bind is refused naming it', async () => {
    const r = await cli(['deploy', '--org', 'o', '--name', 'n', '--subdomain', 's', '--bind', 'NOEQUALS']);
    expect(r).toEqual({ code: 1, out: 'cortexctl deploy: --bind[0]: must be ENV_NAME=<secret id>\n' });
  });

  it('a secret value is never taken from argv: --value is an unknown option, and the value is not echoed', async () => {
    const value = canary();
    const r = await cli([
      'secrets',
      'add',
      '--org',
      'o',
      '--name',
      'n',
      '--provider',
      'anthropic',
      '--value',
      value,
    ]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^cortexctl secrets: Unknown option '--value'/);
    expect(r.out).not.toContain(value);
  });

  it('an empty value on stdin is refused before anything is stored', async () => {
    const r = await cli(
      ['secrets', 'add', '--org', 'o', '--name', 'n', '--provider', 'anthropic'],
      async () => '\n',
    );
    expect(r).toEqual({
      code: 1,
      out: 'cortexctl secrets: value: is empty (pipe it on standard input, or type it at the prompt)\n',
    });
  });

  it('missing required flags and unknown subcommands say what to do', async () => {
    expect(await cli(['deploy', '--name', 'n'])).toEqual({
      code: 1,
      out: 'cortexctl deploy: --org: is required\n',
    });
    expect(await cli(['orgs', 'delete', 'x'])).toEqual({
      code: 1,
      out: 'cortexctl orgs: argv: usage: cortexctl orgs create <name>\n',
    });
    expect((await cli(['status'])).out).toBe('cortexctl status: deployment id: is required\n');
  });
});
