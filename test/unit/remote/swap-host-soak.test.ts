import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { swapCommands } from '../../../orchestrator/remote/swap-commands';
import { helperScriptWithoutBus } from '../../support/swap-helper';

/** The helper, remembering what wait-healthy judged healthy under this test's directory. */
const script = (): string =>
  helperScriptWithoutBus(join(dir, 'healthy-')).replace(
    'LOCK = "/run/cortex-swap.lock"',
    `LOCK = "${dir}/lock"`,
  );

/**
 * The host helper's `soak` mode (issue 11, health after the switch), run here with python3: a
 * real HTTP listener stands in for the new instance, a real TCP connection for a request the old
 * one still serves, and a `systemctl` on PATH answers the unit's properties from a file the test
 * changes (NRestarts, ActiveState, SubState), as `systemctl show` prints them.
 */
let dir: string;
let props: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'soak-'));
  props = join(dir, 'props');
  writeFileSync(props, 'NRestarts=0\nActiveState=active\nSubState=running\n');
  writeFileSync(join(dir, 'systemctl'), `#!/bin/sh\ncat '${props}'\n`);
  chmodSync(join(dir, 'systemctl'), 0o755);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const helper = (mode: string, args: readonly string[]) =>
  new Promise<{ code: number | null; stdout: string; ms: number }>((resolve) => {
    const t0 = performance.now();
    const p = spawn('python3', ['-I', '-c', script(), mode, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: `${dir}:/usr/bin:/bin` },
    });
    let stdout = '';
    p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, ms: performance.now() - t0 });
    });
  });
const soak = (args: readonly string[]) => helper('soak', args);
/** The unit's properties as `systemctl show` prints them (the stub prints them whatever is asked). */
const unitIs = (restarts: number, mainStart: number) =>
  writeFileSync(
    props,
    `NRestarts=${restarts}\nExecMainStartTimestampMonotonic=${mainStart}\nActiveState=active\nSubState=running\n`,
  );

/** An HTTP listener answering `/health` 200 while `healthy()` says so, else 503. */
const agent = async (healthy: () => boolean): Promise<{ server: Server; port: number }> => {
  const server = createHttpServer((req, res) => {
    res.writeHead(req.url === '/health' && healthy() ? 200 : 503).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
};
const close = (s: { close(cb: () => void): unknown; closeAllConnections?: () => void }): Promise<void> =>
  new Promise((r) => {
    s.closeAllConnections?.();
    s.close(() => r());
  });
const UNIT = 'cortex-agent@green.service';

describe('the host helper: soak', () => {
  it('a new instance healthy throughout and no old one: soaked, after the soak time, not before', async () => {
    const a = await agent(() => true);
    try {
      const r = await soak([UNIT, String(a.port), '/health', '700', '0', '0']);
      expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
      expect(r.ms).toBeGreaterThanOrEqual(700);
    } finally {
      await close(a.server);
    }
  });

  it('3 failed probes in a row: unhealthy probes (exit 1), with the unit state, well before the soak ends', async () => {
    let healthy = true;
    const a = await agent(() => healthy);
    setTimeout(() => (healthy = false), 400);
    try {
      const r = await soak([UNIT, String(a.port), '/health', '20000', '0', '0']);
      expect([r.code, r.stdout]).toEqual([1, 'unhealthy probes 3 active/running\n']);
      expect(r.ms).toBeLessThan(20_000);
    } finally {
      await close(a.server);
    }
  });

  it('a listener gone (the process died): connection refused counts as a failed probe', async () => {
    const a = await agent(() => true);
    const port = a.port;
    setTimeout(() => void close(a.server), 300);
    const r = await soak([UNIT, String(port), '/health', '20000', '0', '0']);
    expect([r.code, r.stdout]).toEqual([1, 'unhealthy probes 3 active/running\n']);
  });

  it('one failed probe between good ones is not enough', async () => {
    let n = 0;
    const a = await agent(() => ++n !== 2);
    try {
      const r = await soak([UNIT, String(a.port), '/health', '1200', '0', '0']);
      expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
      expect(n).toBeGreaterThan(2);
    } finally {
      await close(a.server);
    }
  });

  it('a restart of the unit during the soak (NRestarts grew), though every probe answered: unhealthy restarts', async () => {
    // the restart comes once the soak probes (its start is read before its first probe: a timer
    // could fire before a slow python3 start has read it, and the soak would start from the restart)
    let probed = 0;
    const a = await agent(() => {
      if (++probed === 2) writeFileSync(props, 'NRestarts=1\nActiveState=active\nSubState=running\n');
      return true;
    });
    try {
      const r = await soak([UNIT, String(a.port), '/health', '800', '0', '0']);
      expect([r.code, r.stdout]).toEqual([1, 'unhealthy restarts 1 active/running\n']);
    } finally {
      await close(a.server);
    }
  });

  it('a unit not active/running at the end, or whose restarts cannot be read: unhealthy', async () => {
    const a = await agent(() => true);
    try {
      writeFileSync(props, 'NRestarts=0\nActiveState=deactivating\nSubState=stop-sigterm\n');
      const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
      expect([r.code, r.stdout]).toEqual([1, 'unhealthy state 0 deactivating/stop-sigterm\n']);
      writeFileSync(props, 'ActiveState=active\nSubState=running\n');
      const r2 = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
      expect([r2.code, r2.stdout]).toEqual([1, 'unhealthy restarts -1 active/running\n']);
    } finally {
      await close(a.server);
    }
  });

  it('the old port: waits while a connection to it is open (drain-timeout at the bound), ends as soon as it closes (drained)', async () => {
    const a = await agent(() => true);
    // the old instance, with one request in flight (an open connection it accepted)
    const accepted = new Set<Socket>();
    const old = createServer((s) => void accepted.add(s));
    await new Promise<void>((r) => old.listen(0, '127.0.0.1', r));
    const oldPort = (old.address() as AddressInfo).port;
    const client = connect(oldPort, '127.0.0.1');
    await new Promise<void>((r) => client.once('connect', () => r()));
    try {
      const held = await soak([UNIT, String(a.port), '/health', '200', String(oldPort), '900']);
      expect([held.code, held.stdout]).toEqual([0, 'drain-timeout 1\n']);
      expect(held.ms).toBeGreaterThanOrEqual(900);

      const pending = soak([UNIT, String(a.port), '/health', '200', String(oldPort), '20000']);
      setTimeout(() => {
        client.destroy();
        accepted.forEach((s) => s.destroy());
      }, 600);
      const drained = await pending;
      expect([drained.code, drained.stdout]).toEqual([0, 'drained\n']);
      expect(drained.ms).toBeLessThan(20_000);
    } finally {
      client.destroy();
      accepted.forEach((s) => s.destroy());
      await close(old);
      await close(a.server);
    }
  });

  it('it ends on a good probe only: a listener that turns bad just before the soak ends is asked again, and is unhealthy', async () => {
    let healthy = true;
    const a = await agent(() => healthy);
    setTimeout(() => (healthy = false), 550);
    try {
      // 700 ms of soak: the probe at ~750 ms fails; a soak that ended on time would say `soaked`
      const r = await soak([UNIT, String(a.port), '/health', '700', '0', '0']);
      expect([r.code, r.stdout]).toEqual([1, 'unhealthy probes 3 active/running\n']);
    } finally {
      await close(a.server);
    }
  });

  it('exits at once when the connection it answers on is gone (the swap lock is not held to the end of the soak)', async () => {
    const a = await agent(() => true);
    try {
      const t0 = performance.now();
      const p = spawn(
        'python3',
        ['-I', '-c', script(), 'soak', UNIT, String(a.port), '/health', '60000', '0', '0'],
        {
          stdio: ['ignore', 'pipe', 'ignore'],
          env: { PATH: `${dir}:/usr/bin:/bin` },
        },
      );
      const exited = new Promise<number | null>((r) => p.on('close', (code) => r(code)));
      setTimeout(() => p.stdout.destroy(), 500);
      const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
      const code = await exited;
      clearTimeout(timer);
      expect(code).toBe(141);
      expect(performance.now() - t0).toBeLessThan(30_000);
    } finally {
      await close(a.server);
    }
  });

  // Review R5 #7: the restart baseline is taken when the health wait judges the instance healthy,
  // and carried to the soak: a crash and restart by systemd (Restart=always, RestartSec=1) between
  // the two — during the route switch — is a restart after the health check.
  describe('the baseline: the instance wait-healthy judged healthy', () => {
    it('wait-healthy prints it (NRestarts and the main process start) when it answers healthy', async () => {
      const a = await agent(() => true);
      try {
        unitIs(2, 81_234_567);
        const r = await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000']);
        expect([r.code, r.stdout]).toEqual([0, 'healthy 2:81234567\n']);
      } finally {
        await close(a.server);
      }
    });

    it('a restart between the health check and the soak (NRestarts grew, new main process), though every probe answers: unhealthy restarts at once', async () => {
      const a = await agent(() => true);
      try {
        unitIs(0, 5_000_000);
        const waited = await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000']);
        expect(waited.code).toBe(0);
        const baseline = waited.stdout.trim().split(' ')[1] ?? '';
        // the instance crashes during the route switch and systemd starts it again
        unitIs(1, 9_000_000);
        const r = await soak([UNIT, String(a.port), '/health', '3000', '0', '0', baseline]);
        expect([r.code, r.stdout]).toEqual([1, 'unhealthy restarts 1 active/running\n']);
        // found when the soak starts, not at its end
        expect(r.ms).toBeLessThan(3_000);
      } finally {
        await close(a.server);
      }
    });

    it('a new main process with the same restart count (a manual restart resets it): unhealthy restarts', async () => {
      const a = await agent(() => true);
      try {
        unitIs(0, 9_000_000);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0', '0:5000000']);
        expect([r.code, r.stdout]).toEqual([1, 'unhealthy restarts 1 active/running\n']);
      } finally {
        await close(a.server);
      }
    });

    it('the same instance throughout: soaked (the baseline alone fails nothing)', async () => {
      const a = await agent(() => true);
      try {
        unitIs(1, 5_000_000);
        const waited = await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000']);
        const baseline = waited.stdout.trim().split(' ')[1] ?? '';
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0', baseline]);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
      } finally {
        await close(a.server);
      }
    });

    // Review R19 finding 4: a re-run after a cut has no answer of the cut run's health check; the
    // host remembers it per slot (HEALTHY_AT), and the soak of a re-run compares with that.
    it("a re-run after a cut (no baseline passed): the soak compares with what wait-healthy remembered, so a restart between the cut run's health check and the re-run is seen", async () => {
      const a = await agent(() => true);
      try {
        unitIs(0, 5_000_000);
        expect((await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000'])).code).toBe(0);
        expect(readFileSync(join(dir, 'healthy-green'), 'utf8')).toBe('0:5000000\n');
        expect(statSync(join(dir, 'healthy-green')).mode & 0o777).toBe(0o600);
        // the run is cut; the instance crashes and systemd starts it again before the re-run
        unitIs(1, 9_000_000);
        const r = await soak([UNIT, String(a.port), '/health', '3000', '0', '0']);
        expect([r.code, r.stdout]).toEqual([1, 'unhealthy restarts 1 active/running\n']);
        expect(r.ms).toBeLessThan(3_000);
        // answered: forgotten (review R28 finding 2), so a later soak compares with a later answer only
        expect(existsSync(join(dir, 'healthy-green'))).toBe(false);
        writeFileSync(join(dir, 'healthy-green'), '0:5000000\n', { mode: 0o600 });
        const dash = await soak([UNIT, String(a.port), '/health', '300', '0', '0', '-']);
        expect([dash.code, dash.stdout]).toEqual([1, 'unhealthy restarts 1 active/running\n']);
      } finally {
        await close(a.server);
      }
    });

    it('a re-run after a cut, the same instance throughout: soaked', async () => {
      const a = await agent(() => true);
      try {
        unitIs(1, 5_000_000);
        expect((await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000'])).code).toBe(0);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
      } finally {
        await close(a.server);
      }
    });

    it("only the slot it was judged for: blue's remembered answer is not green's", async () => {
      const a = await agent(() => true);
      try {
        unitIs(0, 5_000_000);
        await helper('wait-healthy', ['cortex-agent@blue.service', String(a.port), '/health', '2000']);
        unitIs(1, 9_000_000);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
      } finally {
        await close(a.server);
      }
    });

    it("a soak that answers forgets it (soaked here): a later swap's soak never compares with this answer", async () => {
      const a = await agent(() => true);
      try {
        unitIs(1, 5_000_000);
        await helper('wait-healthy', [UNIT, String(a.port), '/health', '2000']);
        expect(existsSync(join(dir, 'healthy-green'))).toBe(true);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
        expect(existsSync(join(dir, 'healthy-green'))).toBe(false);
      } finally {
        await close(a.server);
      }
    });

    it('not a regular file there (a FIFO, a directory; only root can put one): not trusted, never waited on, and a batch that starts the slot still answers', async () => {
      const a = await agent(() => true);
      try {
        unitIs(1, 9_000_000);
        execFileSync('mkfifo', ['-m', '600', join(dir, 'healthy-green')]);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
        rmSync(join(dir, 'healthy-green'), { force: true }); // (the answered soak unlinked it)
        mkdirSync(join(dir, 'healthy-green'));
        const d = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([d.code, d.stdout]).toEqual([0, 'soaked\n']);
        const b = await helper('batch', [
          JSON.stringify({ steps: [{ argv: ['systemctl', 'start', UNIT] }] }),
        ]);
        expect(b.code).toBe(0);
        expect(JSON.parse(b.stdout.trim())).toMatchObject({ code: 0 });
      } finally {
        await close(a.server);
      }
    });

    it("a start or restart of the slot's unit forgets it (a new instance): a stale answer never fails a later swap's soak", async () => {
      for (const argv of [
        ['start', UNIT],
        ['restart', UNIT],
        ['reload-or-restart', UNIT],
        ['try-restart', UNIT],
        ['enable', '--now', UNIT],
        ['reenable', '--now', UNIT],
      ]) {
        writeFileSync(join(dir, 'healthy-green'), '0:5000000\n', { mode: 0o600 });
        writeFileSync(join(dir, 'healthy-blue'), '0:5000000\n', { mode: 0o600 });
        const program = JSON.stringify({ steps: [{ argv: ['systemctl', ...argv] }] });
        const r = await helper('batch', [program]);
        expect(r.code).toBe(0);
        expect(existsSync(join(dir, 'healthy-green'))).toBe(false);
        // the other slot's is kept
        expect(existsSync(join(dir, 'healthy-blue'))).toBe(true);
      }
      // a command that changes no unit keeps it
      writeFileSync(join(dir, 'healthy-green'), '0:5000000\n', { mode: 0o600 });
      const show = await helper('batch', [
        JSON.stringify({ steps: [{ argv: ['systemctl', 'show', '--property=NRestarts', UNIT] }] }),
      ]);
      expect(show.code).toBe(0);
      expect(existsSync(join(dir, 'healthy-green'))).toBe(true);
    });

    // Found by the fake host's model of this (R28 finding 4): the blue/green swap enables the new
    // slot between its health check and its soak; a helper that forgot on that never had the
    // answer for a re-run's soak.
    it('enabling the slot for boot, as the swap does between the health check and the soak, keeps it; so does disabling it (only with --now may either start it)', async () => {
      writeFileSync(join(dir, 'healthy-green'), '0:5000000\n', { mode: 0o600 });
      for (const argv of [swapCommands.enable(UNIT), swapCommands.disable(UNIT)]) {
        const r = await helper('batch', [JSON.stringify({ steps: [{ argv }] })]);
        expect(r.code).toBe(0);
        expect(existsSync(join(dir, 'healthy-green'))).toBe(true);
      }
    });

    it('nothing remembered (a reboot empties /run; a host whose last swap predates this): the soak starts from what it finds, the limit left', async () => {
      const a = await agent(() => true);
      try {
        unitIs(1, 9_000_000);
        const r = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([r.code, r.stdout]).toEqual([0, 'soaked\n']);
        // a remembered value that is not a baseline is ignored, not trusted
        writeFileSync(join(dir, 'healthy-green'), 'garbage', { mode: 0o600 });
        const g = await soak([UNIT, String(a.port), '/health', '300', '0', '0']);
        expect([g.code, g.stdout]).toEqual([0, 'soaked\n']);
      } finally {
        await close(a.server);
      }
    });
  });

  it.each([
    [[UNIT, '18791', '/health', '1000', '0', '0', '1:x']],
    [[UNIT, '18791', '/health', '1000', '0', '0', '12345678901:1']],
    [['cortex-agent@red.service', '18791', '/health', '1000', '0', '0']],
    [[UNIT, '18791', 'http://x/', '1000', '0', '0']],
    [[UNIT, '18791', '/health', '600001', '0', '0']],
    [[UNIT, '18791', '/health', '1000', '18791', '1000']],
    [[UNIT, '18791', '/health', '1000', '-1', '1000']],
  ])('refuses bad arguments (exit 64) before probing: %j', async (args) => {
    const r = await soak(args);
    expect([r.code, r.stdout]).toEqual([64, '']);
  });
});
