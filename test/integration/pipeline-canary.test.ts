import { execFile } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { makeLogger } from '../../orchestrator/log';
import { agentCommands, parseMainPid } from '../../orchestrator/remote/agent-commands';
import { run } from '../../orchestrator/remote/ssh-shell';
import { ENV_FILE_PATH } from '../../orchestrator/remote/env-file';
import { AGENT_UNIT_NAME } from '../../templates/systemd-unit';
import { agentProbes, parseEnviron } from '../support/agent-probes';
import { testDatabaseUrl } from '../support/db';
import { dumpRedis, orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * Invariant 1 after a full provision: the canary key exists on the agent server in the env file
 * and the agent's environment, and nowhere else we can look — not in Redis (keys, values, the AOF),
 * not in Postgres outside the vault's ciphertext (a dump, the WAL, the server log), not in any log line the
 * orchestrator wrote, not in any other file on the host (user data, cloud-init's copies, the
 * journal), not in the host's console log, and not in any process's argv, here or on the host.
 */
jest.setTimeout(300_000);
const exec = promisify(execFile);

let p: Pipeline;
const logLines: string[] = [];
beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(chunk.toString('utf8'));
      cb();
    },
  });
  p = await startTestPipeline(
    { LOG_LEVEL: 'trace' },
    { log: makeLogger({ level: 'trace', name: 'canary' }, sink) },
  );
});
afterAll(async () => {
  await p?.close(2_000);
});

const filesUnder = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const f = path.join(d, e.name);
      if (e.isDirectory()) await walk(f);
      else if (e.isFile()) out.push(f);
    }
  };
  await walk(dir);
  return out;
};

const containing = async (files: readonly string[], needle: string): Promise<string[]> => {
  const hits: string[] = [];
  for (const f of files) if ((await readFile(f).catch(() => Buffer.alloc(0))).includes(needle)) hits.push(f);
  return hits;
};

describe('a canary key provisioned end to end', () => {
  it('is found in the env file and the agent environment only', async () => {
    const org = await orgWithKey(p);
    const value = org.value;
    const workers = p.makeWorkerSet();
    workers.start(['provision']);
    const { deploymentId } = await p.service.request({
      orgId: org.orgId,
      name: 'canary',
      subdomain: uniqueSubdomain('c'),
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
    });
    const ready = await p.service.watch(deploymentId, () => undefined, { timeoutMs: 240_000 });
    await workers.close(2_000);
    expect(ready.status).toBe('ready');

    // Where it must be (the positive control: the needle is findable the way we look for it).
    const { shell } = await p.access.connect(ready);
    try {
      expect((await run(shell, agentProbes.readFile(ENV_FILE_PATH))).stdout.includes(value)).toBe(true);
      const pid = parseMainPid((await run(shell, agentCommands.mainPid(AGENT_UNIT_NAME))).stdout.toString());
      expect(
        parseEnviron((await run(shell, agentProbes.processEnviron(pid))).stdout)
          .get('ANTHROPIC_API_KEY')
          ?.toString(),
      ).toBe(value);

      // Every other file on the host (the pattern on stdin, so not even this grep's argv holds it).
      const grep = await shell.exec(
        [
          'grep',
          '-rlaF',
          '-f',
          '-',
          '/etc',
          '/var',
          '/usr/local',
          '/root',
          '/home',
          '/tmp',
          '/run',
          '/opt',
          '/srv',
        ],
        { stdin: `${value}\n`, timeoutMs: 120_000 },
      );
      expect(grep.stdout.toString().trim().split('\n').sort()).toEqual([ENV_FILE_PATH]);
      const hostArgv = (await run(shell, ['ps', '-eo', 'args'])).stdout.toString();
      expect(hostArgv.length).toBeGreaterThan(100);
      expect(hostArgv.includes(value)).toBe(false);
    } finally {
      await shell.close();
    }

    // Redis: every key and value, and the append-only file.
    const dump = await dumpRedis(p.redis, '*');
    expect([...dump].filter(([k, v]) => k.includes(value) || v.includes(value))).toEqual([]);
    const stateDir = path.resolve(p.config.CORTEX_STATE_DIR);
    const aof = await filesUnder(path.join(stateDir, 'redis'));
    expect(aof.length).toBeGreaterThan(0);
    expect(await containing(aof, value)).toEqual([]);

    // Postgres: a full dump (the vault holds ciphertext only) and the server log.
    const pgDump = await exec(
      'pg_dump',
      ['--no-owner', '--data-only', testDatabaseUrl().replace(/\?.*$/, '')],
      {
        maxBuffer: 1 << 30,
      },
    );
    expect(pgDump.stdout).toContain(org.secretId);
    expect(pgDump.stdout.includes(value)).toBe(false);
    const pgHome = await stat(path.join(stateDir, 'pg')).then(() => path.join(stateDir, 'pg'));
    // The WAL: every row version written (the vault's rows only ever hold ciphertext).
    const wal = await filesUnder(path.join(pgHome, 'data', 'pg_wal'));
    expect(wal.length).toBeGreaterThan(0);
    expect(await containing(wal, value)).toEqual([]);
    expect(
      await containing(await filesUnder(pgHome).then((fs) => fs.filter((f) => f.endsWith('.log'))), value),
    ).toEqual([]);

    // Every log line the orchestrator wrote, at trace level.
    expect(logLines.length).toBeGreaterThan(10);
    expect(logLines.filter((l) => l.includes(value))).toEqual([]);

    // This machine: the host's console log and state files outside its file system, and every argv.
    const hostDirs = await readdir(path.join(stateDir, 'hosts'));
    const outside = (
      await Promise.all(hostDirs.map((h) => filesUnder(path.join(stateDir, 'hosts', h)).catch(() => [])))
    )
      .flat()
      .filter(
        (f) => !f.includes(`${path.sep}upper${path.sep}`) && !f.includes(`${path.sep}merged${path.sep}`),
      );
    expect(outside.some((f) => f.endsWith('console.log'))).toBe(true);
    expect(await containing(outside, value)).toEqual([]);
    const localArgv = (await exec('ps', ['-eo', 'args'], { maxBuffer: 1 << 26 })).stdout;
    expect(localArgv.includes(value)).toBe(false);

    const done = p.makeWorkerSet();
    done.start(['deprovision']);
    await p.service.destroy(deploymentId);
    await p.service.watch(deploymentId, () => undefined, {
      until: (d) => d.status === 'deleted',
      timeoutMs: 120_000,
    });
    await done.close(2_000);
  });
});
