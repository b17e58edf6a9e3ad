import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canary } from '../../support/canary';
import {
  SESSION_END_LINE,
  batchProgram,
  parseBatchOutput,
  sessionRequest,
  swapCommands,
} from '../../../orchestrator/remote/swap-commands';
import { SWAP_HOST_SCRIPT } from '../../../orchestrator/remote/swap-host-script';
import { helperScriptWithoutBus } from '../../support/swap-helper';

/**
 * The swap's host helper, run here with python3 against a temporary directory in place of
 * /etc/cortex (and of its lock): the atomic writes (the env file from standard input, the record),
 * and a batch's order, polls and required steps. As root (CI) the files are checked root:root.
 */
const root = process.getuid?.() === 0;
let dir: string;
let script: string;
const helper = (args: readonly string[], stdin = '') =>
  spawnSync('python3', ['-I', '-c', script, ...args], { input: stdin });

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'swap-helper-'));
  chmodSync(dir, 0o755);
  script = helperScriptWithoutBus()
    .replace('ENV_DIR = "/etc/cortex"', `ENV_DIR = "${dir}/cortex"`)
    .replace('LOCK = "/run/cortex-swap.lock"', `LOCK = "${dir}/lock"`)
    .replace('SESSION_IDLE_S = 60', 'SESSION_IDLE_S = 1');
  expect(script).not.toBe(SWAP_HOST_SCRIPT);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

(root ? describe : describe.skip)('the host helper (as root)', () => {
  it('write-env: the content from standard input, 0600 root:root in a 0700 directory, stale temp files gone, nothing printed', () => {
    const value = canary();
    const first = helper(['write-env', 'green'], `K="${value}"\n`);
    expect(first.status).toBe(0);
    expect(statSync(`${dir}/cortex`).mode & 0o7777).toBe(0o700);
    // a temp file of a cut write, and a directory someone loosened, are put right by the next write
    writeFileSync(`${dir}/cortex/.agent-green.env.tmp-0123456789abcdef`, 'partial');
    chmodSync(`${dir}/cortex`, 0o755);
    const r = helper(['write-env', 'green'], `K="${value}"\nL="2"\n`);
    expect(r.status).toBe(0);
    expect(`${r.stdout.toString()}${r.stderr.toString()}`).toBe('');
    const st = statSync(`${dir}/cortex/agent-green.env`);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o600]);
    expect(statSync(`${dir}/cortex`).mode & 0o7777).toBe(0o700);
    expect(readFileSync(`${dir}/cortex/agent-green.env`, 'utf8')).toBe(`K="${value}"\nL="2"\n`);
    expect(readdirSync(`${dir}/cortex`)).toEqual(['agent-green.env']);
  });

  it('write-env refuses an empty content and any slot but blue or green; write-record writes one word', () => {
    expect(helper(['write-env', 'blue']).status).toBe(64);
    expect(helper(['write-env', '../x'], 'K="v"\n').status).toBe(64);
    expect(helper(['write-record', 'red']).status).toBe(64);
    expect(helper(['write-record', 'blue']).status).toBe(0);
    expect(readFileSync(`${dir}/cortex/active-slot`, 'utf8')).toBe('blue\n');
    expect(statSync(`${dir}/cortex/active-slot`).mode & 0o7777).toBe(0o600);
  });

  it('a batch runs in order, hands standard input only to its marked step, polls until a match, and stops at a required step not done', () => {
    const value = canary();
    const program = swapCommands.batch([
      { argv: swapCommands.writeEnvFile('blue'), stdin: true, required: true },
      { argv: ['ls', '-A1', '--', `${dir}/cortex`] },
      // never matches: polled for its bound (300 ms) and returned as not done
      { argv: ['ls', '-A1', '--', `${dir}/cortex`], match: '^nothing$', poll: { everyMs: 50, forMs: 300 } },
      { argv: ['ls', '-A1', '--', `${dir}/none`], required: true },
      { argv: swapCommands.writeActiveSlot('green') },
    ])[5];
    const t0 = Date.now();
    const r = helper(['batch', program as string], `K="${value}"\n`);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    expect(r.status).toBe(0);
    const out = parseBatchOutput(r.stdout.toString());
    expect(out.map((x) => x.code)).toEqual([0, 0, 0, 2]);
    expect(out[1]?.stdout.toString()).toBe('agent-blue.env\n');
    expect(r.stdout.toString()).not.toContain(value);
    expect(readFileSync(`${dir}/cortex/agent-blue.env`, 'utf8')).toBe(`K="${value}"\n`);
    // the step after the required one that failed did not run
    expect(readdirSync(`${dir}/cortex`)).toEqual(['agent-blue.env']);
  });
});

/** The helper in session mode: request lines in, answer lines out (until SESSION_END_LINE). */
const startSession = () => {
  const p = spawn('python3', ['-I', '-c', script, 'session']);
  let buf = '';
  const lines: string[] = [];
  const waiters: (() => void)[] = [];
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    lines.push(...parts);
    waiters.splice(0).forEach((w) => w());
  });
  const exited = new Promise<number | null>((r) => p.on('close', (c) => r(c)));
  /** The answer to one request: the lines before the end marker, or undefined if none came within `ms`. */
  /** The answer to the request sent last: the lines before the end marker, or undefined if none came within `ms`. */
  const answer = async (ms = 5_000) => {
    const until = Date.now() + ms;
    for (;;) {
      const end = lines.indexOf(SESSION_END_LINE);
      if (end >= 0) return lines.splice(0, end + 1).slice(0, -1);
      const left = until - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, left);
      });
    }
  };
  const ask = (steps: Parameters<typeof swapCommands.batch>[0], stdin?: string, ms = 5_000) => {
    p.stdin.write(
      sessionRequest(
        batchProgram(swapCommands.batch(steps)) as string,
        stdin ? Buffer.from(stdin) : undefined,
      ),
    );
    return answer(ms);
  };
  return { p: p as ChildProcessWithoutNullStreams, ask, answer, exited };
};

(root ? describe : describe.skip)('the host helper in session mode (as root)', () => {
  it('answers batch after batch on one process, each ended by the end line, standard input only to its marked step', async () => {
    const s = startSession();
    const value = canary();
    const a = await s.ask(
      [{ argv: swapCommands.writeEnvFile('green'), stdin: true, required: true }],
      `K="${value}"\n`,
    );
    expect(a?.map((l) => parseBatchOutput(l)[0]?.code)).toEqual([0]);
    const b = await s.ask([
      { argv: ['ls', '-A1', '--', `${dir}/cortex`] },
      { argv: swapCommands.writeActiveSlot('green') },
    ]);
    expect(b?.length).toBe(2);
    expect(parseBatchOutput((b ?? []).join('\n'))[0]?.stdout.toString()).toBe('agent-green.env\n');
    expect(readFileSync(`${dir}/cortex/agent-green.env`, 'utf8')).toBe(`K="${value}"\n`);
    expect(readFileSync(`${dir}/cortex/active-slot`, 'utf8')).toBe('green\n');
    s.p.stdin.end();
    expect(await s.exited).toBe(0);
  });

  it("a step's command gets end of file on its standard input, never the session's (which carries the next requests)", async () => {
    const s = startSession();
    const t0 = Date.now();
    const a = await s.ask(
      [{ argv: ['ls', '-A1', '--', dir] }, { argv: swapCommands.activeSlot() }],
      undefined,
      5_000,
    );
    expect(a).toHaveLength(2);
    // cat of the record path reads its file; the proof is a step that reads standard input: run on
    // the helper directly (a batch may only run the swap's programs)
    const reader = spawnSync(
      'python3',
      [
        '-I',
        '-c',
        `${script.replace(/\nmain\(\)\s*$/, '\n')}\nimport sys\nprint(run(["sh", "-c", "head -c1 | wc -c"])[1].decode().strip())`,
      ],
      { input: 'x'.repeat(10), timeout: 10_000 },
    );
    expect(reader.stdout.toString().trim()).toBe('0');
    expect(Date.now() - t0).toBeLessThan(8_000);
    s.p.stdin.end();
    expect(await s.exited).toBe(0);
  });

  it('holds the host lock for its whole life: a second session waits until the first one ends', async () => {
    const first = startSession();
    expect(await first.ask([{ argv: ['ls', '-A1', '--', dir] }])).toHaveLength(1);
    const second = startSession();
    expect(await second.ask([{ argv: ['ls', '-A1', '--', dir] }], undefined, 700)).toBeUndefined();
    first.p.stdin.end();
    expect(await first.exited).toBe(0);
    // the waiting request is answered once the lock is free
    expect(await second.answer(5_000)).toHaveLength(1);
    second.p.stdin.end();
    expect(await second.exited).toBe(0);
  });

  it('ends on a malformed request (64), at end of input (0), and after its idle limit without a request (0)', async () => {
    const bad = startSession();
    bad.p.stdin.write('{"program": 1}\n');
    expect(await bad.exited).toBe(64);
    const eof = startSession();
    eof.p.stdin.end();
    expect(await eof.exited).toBe(0);
    const idle = startSession();
    const t0 = Date.now();
    expect(await idle.exited).toBe(0); // SESSION_IDLE_S is 1 in this test
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    // the lock is free again: a new session answers at once
    const next = startSession();
    expect(await next.ask([{ argv: ['ls', '-A1', '--', dir] }], undefined, 3_000)).toHaveLength(1);
    next.p.stdin.end();
    expect(await next.exited).toBe(0);
  });
});

describe('the host helper refuses bad arguments', () => {
  it.each([
    [['digests', 'cortex-agent@red.service']],
    [['wait-healthy', 'cortex-agent@blue.service', '0', '/health', '1']],
    [['wait-healthy', 'cortex-agent@blue.service', '18790', 'file:///etc/shadow', '1']],
    [['port-holders', '70000']],
  ])('%j: exit 64, nothing run', (args) => {
    expect(helper(args, '00'.repeat(32)).status).toBe(64);
  });
});
