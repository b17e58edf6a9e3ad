import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SWAP_HOST_SCRIPT } from '../../../orchestrator/remote/swap-host-script';

/**
 * The swap helper's systemctl over D-Bus (orchestrator/remote/swap-host-script.ts) against a fake
 * systemd on a socket of the test's own: the cases a real systemd rarely shows on demand (a job's
 * end before its reply, "skipped", one job for a unit named twice, refusals and their exit codes, a
 * manager that never answers while it keeps signalling, a connection lost mid-call, a reply cut into
 * single bytes). test/integration/agent-swap.test.ts compares the answers with systemctl's on a
 * real host.
 */
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'swap-dbus-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const DRIVER = String.raw`
import json, os, socket, struct, sys, threading, time
SOCK = sys.argv[1]
H = {"__name__": "helper"}
exec(compile(sys.stdin.read(), "helper", "exec"), H)
H["SD_SOCKET"] = SOCK
Writer, Reader = H["Writer"], H["Reader"]

def msg(mtype, fields, sig="", args=(), serial=1000):
    body = Writer(); body.puts(sig, args)
    if sig:
        fields = fields + [(8, ("g", sig))]
    head = Writer(); head.b += bytes([ord("l"), mtype, 0, 1])
    head.put("u", len(body.b)); head.put("u", serial); head.put("a(yv)", fields); head.align(8)
    return bytes(head.b) + bytes(body.b)

MANAGER = [(1, ("o", "/org/freedesktop/systemd1")), (2, ("s", "org.freedesktop.systemd1.Manager"))]
def job_removed(path, unit, result):
    return msg(4, MANAGER + [(3, ("s", "JobRemoved"))], "uoss", [1, path, unit, result])
def props_changed():
    return msg(4, [(1, ("o", "/org/freedesktop/systemd1/unit/x")), (2, ("s", "org.freedesktop.DBus.Properties")), (3, ("s", "PropertiesChanged"))], "sa{sv}as", ["x", [("A", ("s", "b"))], []])
def reply(serial, sig, args):
    return msg(2, [(5, ("u", serial))], sig, args)
def error(serial, name, text):
    return msg(3, [(5, ("u", serial)), (4, ("s", name))], "s", [text])

class Conn:
    def __init__(self, c):
        self.c, self.buf, self.calls = c, b"", []
    def call(self):
        while len(self.buf) < 16:
            got = self.c.recv(65536)
            if not got:
                return None
            self.buf += got
        blen, serial, flen = struct.unpack("<III", self.buf[4:16])
        hlen = 16 + flen + (-(16 + flen) % 8)
        while len(self.buf) < hlen + blen:
            self.buf += self.c.recv(65536)
        m, self.buf = self.buf[:hlen + blen], self.buf[hlen + blen:]
        f = dict(Reader(m, "<", 12).value("a(yv)"))
        body = Reader(m[hlen:], "<").values(f[8]) if f.get(8) else []
        self.calls.append([f.get(3)] + body)
        return serial, f.get(3), body

def serve(handler):
    try:
        os.unlink(SOCK)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX)
    s.bind(SOCK)
    s.listen(4)
    conns = []
    def run():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            got = b""
            while b"BEGIN\r\n" not in got:
                got += c.recv(512)
            c.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
            k = Conn(c)
            conns.append(k)
            try:
                handler(k)
            except Exception:
                pass
    threading.Thread(target=run, daemon=True).start()
    return s, conns

def case(handler, args, timeout=5, keep=False):
    H["bus_close"]()
    s, conns = serve(handler)
    t = time.monotonic()
    r = H["systemctl_fast"](args, timeout)
    took = time.monotonic() - t
    s.close()
    if not keep:
        H["bus_close"]()
    out = None if r is None else {"code": r[0], "out": r[1].decode(), "err": r[2].decode()}
    return {"answer": out, "took": round(took, 2), "calls": [k.calls for k in conns]}

def jobs(results):
    # answers StartUnit/StopUnit/RestartUnit with job paths; JobRemoved with the given results
    def h(k):
        n = 0
        while True:
            got = k.call()
            if got is None:
                return
            serial, member, body = got
            path, result, before = results[n]
            n += 1
            if before:
                k.c.sendall(job_removed(path, body[0], result))
            k.c.sendall(reply(serial, "o", [path]))
            if not before:
                k.c.sendall(props_changed() + job_removed(path, body[0], result))
    return h

def refuse(name):
    def h(k):
        serial, _, _ = k.call()
        k.c.sendall(error(serial, name, "refused by the test"))
    return h

def silent_but_chatty(k):
    k.call()
    for _ in range(100):
        k.c.sendall(props_changed())
        time.sleep(0.1)

def lost(k):
    k.call()
    k.c.close()

def show(k):
    values = {"MainPID": ("u", 42), "NRestarts": ("u", 3), "ActiveState": ("s", "active"), "SubState": ("s", "running"), "Result": ("s", "success"), "ExecMainStartTimestampMonotonic": ("t", 12345678901), "ExecMainStatus": ("i", -1)}
    while True:
        got = k.call()
        if got is None:
            return
        serial, member, body = got
        if member == "LoadUnit":
            data = reply(serial, "o", ["/org/freedesktop/systemd1/unit/cortex_2dagent_40blue_2eservice"])
        else:
            data = reply(serial, "v", [values[body[1]]])
        for i in range(len(data)):  # one byte at a time
            k.c.send(data[i:i + 1])

R = {}
R["job_end_before_reply"] = case(jobs([("/j/1", "done", True)]), ["start", "cortex-agent@blue.service"])
R["skipped"] = case(jobs([("/j/2", "skipped", False)]), ["start", "cortex-agent@blue.service"])
R["failed"] = case(jobs([("/j/3", "failed", False)]), ["stop", "cortex-agent@blue.service"])
R["canceled"] = case(jobs([("/j/4", "canceled", False)]), ["restart", "cortex-upstream.service"])
R["same_job_twice"] = case(jobs([("/j/5", "done", False), ("/j/5", "done", False)]), ["restart", "cortex-upstream.service", "cortex-upstream.service"])
R["two_units_one_fails"] = case(jobs([("/j/6", "done", False), ("/j/7", "dependency", False)]), ["restart", "caddy.service", "cortex-upstream.service"])
for name in ("NoSuchUnit", "LoadFailed", "JobTypeNotApplicable"):
    R["start_" + name] = case(refuse("org.freedesktop.systemd1." + name), ["start", "x.service"])
R["start_AccessDenied"] = case(refuse("org.freedesktop.DBus.Error.AccessDenied"), ["start", "x.service"])
R["reset_failed_NoSuchUnit"] = case(refuse("org.freedesktop.systemd1.NoSuchUnit"), ["reset-failed", "x.service"])
R["show"] = case(show, ["show", "--property=SubState,NRestarts,ActiveState,ExecMainStartTimestampMonotonic,ExecMainStatus", "cortex-agent@blue.service"])
R["show_value"] = case(show, ["show", "--property=ActiveState,SubState,Result,ExecMainStatus", "--value", "cortex-agent@blue.service"])
R["never_answers"] = case(silent_but_chatty, ["stop", "cortex-agent@blue.service"], timeout=1)
R["lost"] = case(lost, ["start", "cortex-agent@blue.service"], keep=True)
def plain(r):
    return None if r is None else {"code": r[0], "out": r[1].decode(), "err": r[2].decode()}
R["after_lost"] = plain(H["systemctl_fast"](["start", "cortex-agent@blue.service"], 5))
H["bus_close"]()
for name, args in (("is_enabled", ["is-enabled", "x.service"]), ("show_socket", ["show", "--property=ActiveState", "x.socket"]), ("dash", ["start", "-.mount"]), ("show_unknown", ["show", "--property=Environment", "x.service"]), ("enable_plain", ["enable", "x.service"])):
    R["not_answered_" + name] = case(jobs([]), args)
H["SD_SOCKET"] = SOCK + ".none"
H["bus_close"]()
R["no_socket"] = plain(H["systemctl_fast"](["start", "cortex-agent@blue.service"], 5))
print(json.dumps(R))
`;

interface Case {
  answer: { code: number; out: string; err: string } | null;
  took: number;
  calls: unknown[][][];
}

const runDriver = (): Record<string, Case> => {
  const sock = join(dir, 'sd.sock');
  const helper = SWAP_HOST_SCRIPT.replace(/\nmain\(\)\n*$/, '\n');
  expect(helper).not.toBe(SWAP_HOST_SCRIPT);
  const r = spawnSync('python3', ['-I', '-c', DRIVER, sock], {
    input: helper,
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`driver failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, Case>;
};

describe('swap helper: systemctl over D-Bus, against a fake systemd', () => {
  let R: Record<string, Case>;
  beforeAll(() => {
    R = runDriver();
  });
  const answer = (k: string) => R[k]?.answer;

  it('waits for the job, whether its end comes before or after the reply; "skipped" is done, as for systemctl', () => {
    expect(answer('job_end_before_reply')).toEqual({ code: 0, out: '', err: '' });
    expect(R.job_end_before_reply?.calls).toEqual([[['StartUnit', 'cortex-agent@blue.service', 'replace']]]);
    expect(answer('skipped')).toEqual({ code: 0, out: '', err: '' });
    expect(answer('failed')).toMatchObject({
      code: 1,
      err: 'Job for cortex-agent@blue.service failed (result: failed).\n',
    });
    expect(answer('canceled')?.code).toBe(1);
    expect(answer('two_units_one_fails')).toMatchObject({
      code: 1,
      err: expect.stringContaining('cortex-upstream.service failed (result: dependency)') as unknown,
    });
  });

  it('one job for a unit named twice is waited for once (no wait to the deadline)', () => {
    expect(answer('same_job_twice')).toEqual({ code: 0, out: '', err: '' });
    expect(R.same_job_twice?.took).toBeLessThan(2);
  });

  it("refusals get systemctl's exit codes", () => {
    expect(answer('start_NoSuchUnit')?.code).toBe(5);
    expect(answer('start_LoadFailed')?.code).toBe(6);
    expect(answer('start_JobTypeNotApplicable')?.code).toBe(3);
    expect(answer('start_AccessDenied')?.code).toBe(4);
    expect(answer('start_NoSuchUnit')?.err).toBe('Failed to start x.service: refused by the test\n');
    expect(answer('reset_failed_NoSuchUnit')?.code).toBe(1);
  });

  it("show prints systemctl's order and format, from a reply cut into single bytes", () => {
    expect(answer('show')).toEqual({
      code: 0,
      out: 'NRestarts=3\nExecMainStartTimestampMonotonic=12345678901\nExecMainStatus=-1\nActiveState=active\nSubState=running\n',
      err: '',
    });
    expect(answer('show_value')?.out).toBe('success\n-1\nactive\nrunning\n');
  });

  it('a manager that never answers while it keeps signalling: 124 at the deadline, not later', () => {
    expect(answer('never_answers')).toEqual({ code: 124, out: '', err: 'timed out\n' });
    expect(R.never_answers?.took).toBeGreaterThanOrEqual(0.9);
    expect(R.never_answers?.took).toBeLessThan(2);
  });

  it('a connection lost mid-call fails that command (never tried again) and later ones run systemctl', () => {
    expect(answer('lost')).toEqual({ code: 1, out: '', err: 'the connection to systemd was lost\n' });
    expect(R.lost?.calls).toEqual([[['StartUnit', 'cortex-agent@blue.service', 'replace']]]);
    expect(R.after_lost).toBeNull();
  });

  it('forms it does not answer, or no socket, are left to systemctl (nothing sent)', () => {
    for (const k of ['is_enabled', 'show_socket', 'dash', 'show_unknown', 'enable_plain']) {
      expect({ k, answer: answer(`not_answered_${k}`) }).toEqual({ k, answer: null });
      expect({ k, calls: R[`not_answered_${k}`]?.calls.flat() }).toEqual({ k, calls: [] });
    }
    expect(R.no_socket).toBeNull();
  });
});
