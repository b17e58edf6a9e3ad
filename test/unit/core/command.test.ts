import { runCommand } from '../../../orchestrator/command';

/** runCommand's bounds: a command that outlives its time or floods its output is killed, group and all. */
describe('runCommand', () => {
  it('returns the exit code and both outputs; stdin gets the input', async () => {
    const r = await runCommand('sh', ['-c', 'cat; echo err >&2; exit 4'], {
      timeoutMs: 10_000,
      input: 'in\n',
    });
    expect(r).toEqual({ stdout: 'in\n', stderr: 'err\n', code: 4 });
  });

  it('kills the whole group at the timeout: a grandchild holding the pipes open does not hold it', async () => {
    const t0 = Date.now();
    const r = await runCommand('sh', ['-c', 'sleep 30 & sleep 30; echo never'], { timeoutMs: 300 });
    expect(r).toMatchObject({ code: null, failure: 'timeout', stdout: '' });
    // Not the 30 s of the sleeps (a grandchild left alive keeps stdout open until it ends).
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('kills a command whose output passes the bound', async () => {
    const r = await runCommand('sh', ['-c', 'yes | head -c 100000; sleep 30'], {
      timeoutMs: 20_000,
      maxBytes: 1000,
    });
    expect(r).toMatchObject({ code: null, failure: 'output_too_large' });
    expect(r.stdout.length).toBeLessThanOrEqual(1000);
  });

  it('a program that does not exist is a failure with no code, not a throw', async () => {
    const r = await runCommand('/nonexistent/cortex-no-such-program', [], { timeoutMs: 5_000 });
    expect(r.code).toBeNull();
    expect(r.failure).toMatch(/ENOENT/);
  });
});
