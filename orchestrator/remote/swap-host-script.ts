/**
 * The agent swap's host-side helper (issue 11, rotation speed): one Python program, run as
 * `python3 -I -c <this> <mode> <args…>` by the commands in swap-commands.ts. It exists so that a
 * swap phase is ONE SSH round trip instead of ten: `batch` runs a list of argv steps (the same
 * commands as data the swap sent one by one before) in order, repeats a step at a short interval
 * until its output matches (a poll, bounded), stops early when a required step fails, and prints
 * one JSON line per finished step as soon as it finishes (a dropped connection kills it at the next
 * step boundary: the write fails), holding a lock (/run/cortex-swap.lock) so that such a cut batch
 * and the batches of the next run never overlap on one host. The other modes are the steps whose input depends on an earlier
 * answer (a process id, a socket's holder), done on the host:
 *
 * - `digests <unit>`: HMAC-SHA256(nonce, value) per variable of the unit's running process; the
 *   nonce (hex, fresh per check) is read from standard input, so nothing derived from a value
 *   without that one-time key leaves the host. Exit 3: the unit runs no process.
 * - `wait-healthy <unit> <port> <path> <ms>`: GET http://127.0.0.1:<port><path> every 100 ms (after
 *   2 s every 250 ms; the unit's state every second) until
 *   200 (`healthy <NRestarts>:<ExecMainStartTimestampMonotonic>`, read right after that answer: the
 *   baseline the soak compares with; `healthy -` when it cannot be read; exit 0), a crash loop (`crashloop <restarts> <state>`, exit 1) or the deadline
 *   (`timeout <state>`, exit 2). An answer begun after the deadline does not count. One probe takes
 *   3 s at most however slowly the listener answers (it may be hostile: a trickled answer must not
 *   hold the helper nor the lock); the status counts once the head is in (at most 64 KiB are
 *   read in all, the body within what is left of the bound).
 * - `port-holders <port>`: the listening sockets on the port (`ss -p`) and the cgroup of every
 *   process holding one, as JSON: the orchestrator decides whether they all belong to one unit.
 * - `soak <unit> <port> <path> <soak ms> <old port> <drain ms> [<baseline>]`: after traffic moved to a new
 *   instance, GET its health path every 250 ms for at least `soak ms`, and until no ESTABLISHED
 *   TCP connection is left on `old port` (read from /proc/net/tcp{,6}; 0: no old instance) or
 *   `drain ms` have passed: `drained`, `drain-timeout <left>` or `soaked` (exit 0). Three failed
 *   probes in a row, a restart of the unit (NRestarts or its main process's start, read at the
 *   start and the end, no longer what wait-healthy's `baseline` was: a restart between the health
 *   check and the soak counts; `-` or none, a re-run after a cut: what wait-healthy judged healthy
 *   for that slot as the host remembers it (/run/cortex-swap.healthy-<slot>, written with the
 *   answer, removed by a helper command that may start the slot again and once a soak of it has
 *   answered, gone with a reboot), else the soak's start) or a unit not
 *   active/running at the end: `unhealthy probes|restarts|state <n> <state>` (exit 1), the old
 *   instance still there to go back to.
 * - `write-record <slot>`: the active-slot record written atomically, as the SFTP writer does
 *   (root:root 0700 directory, temp file O_EXCL 0600, fsync, fchown, rename, directory fsync,
 *   verified); temp files of a cut write are removed first.
 * - `write-env <slot>`: the slot's env file, the same way, its content read from standard input
 *   (the batch's, handed to this step only): no value on a command line, nothing of it printed.
 *
 * - `session`: many batches through one helper (one python3 start per swap, not per phase): each
 *   request is a line on standard input, `{"program": <batch program>, "data": <base64 input>}`, its
 *   answers the batch's lines then `{"end": true}`; the lock is held for the session's life, which
 *   ends at end of input, at a malformed line or after 60 s without a request.
 *
 * A step's `systemctl` command (start, stop, restart, reset-failed, enable/disable --no-reload, show
 * of the unit properties the swap reads) is answered in the helper over systemd's private D-Bus
 * socket, with systemctl's exit codes and output, instead of starting systemctl (9 ms of CPU each on
 * an idle local host, ~30 loaded; a swap ran ~15): any other form, or no answer on the socket, runs
 * systemctl. Checked against systemctl itself on a real host (test/integration/agent-swap.test.ts).
 *
 * Nothing here reads a file but /proc/<pid>/environ (digests only), /proc/<pid>/cgroup,
 * /proc/net/tcp{,6} and its own /run/cortex-swap.healthy-<slot> (a regular file only, never
 * blocking), and no mode takes a path: the env files stay write-only for the orchestrator
 * (`write-env` writes one, named by its slot).
 */
export const SWAP_HOST_SCRIPT = String.raw`import binascii, json, os, re, subprocess, sys, time

# Only what every mode needs is imported here; a mode imports the rest itself (hashlib and hmac for
# digests, socket and signal for a probe, fcntl for the lock, stat for a write): a helper is started
# for each phase of a swap, and on a small host the imports were most of its cost (84 ms of CPU for
# the full set against 48 ms, python3 -I on this project's host image; 20 ms for the bare start).

UNIT = re.compile(r"cortex-agent@(blue|green)\.service")
HTTP_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")
ENV_DIR = "/etc/cortex"
RECORD = ENV_DIR + "/active-slot"
LOCK = "/run/cortex-swap.lock"
# What wait-healthy judged healthy, per slot ("<NRestarts>:<main start>"), for the soak of a re-run
# after a cut, whose first run's answer is gone (review R19 finding 4). In /run: gone with a reboot
# (a new boot's instance has no health check to compare with). Removed when the slot's unit is
# started or restarted (a new instance), written when wait-healthy answers healthy.
HEALTHY_AT = "/run/cortex-swap.healthy-"
STATE_WORD = re.compile(r"[a-z0-9-]{1,32}")


class Bad(Exception):
    pass


# systemctl without a process (issue 11, rotation speed): a swap ran ~15 systemctl commands, each a
# process start that links libsystemd-shared (9 ms of CPU on an idle local host, ~30 on a loaded
# one: the largest share of the helper's cost). The forms the swap uses are answered here over
# systemd's private D-Bus socket (/run/systemd/private, root only: what systemctl itself talks to
# as root), with systemctl's exit codes and output: 'start', 'stop', 'restart' (units), 'reset-failed',
# 'enable --no-reload', 'disable --no-reload' and 'show --property=<known>[,…] [--value] <unit>'.
# Any other form, or a host where the socket does not answer, runs systemctl itself. A connection
# lost during a call is that call's failure (exit 1), never a second try that could run a job twice.

SD_DEST = "org.freedesktop.systemd1"
SD_PATH = "/org/freedesktop/systemd1"
SD_MANAGER = "org.freedesktop.systemd1.Manager"
SD_UNIT = "org.freedesktop.systemd1.Unit"
SD_SERVICE = "org.freedesktop.systemd1.Service"
# The properties 'show' answers here, in the order systemctl prints them (the Service interface's
# before the Unit's, each in systemd's table order: what systemctl 252 prints for these names).
SHOW_PROPS = [
    ("MainPID", SD_SERVICE), ("Result", SD_SERVICE), ("NRestarts", SD_SERVICE),
    ("ExecMainStartTimestampMonotonic", SD_SERVICE), ("ExecMainStatus", SD_SERVICE),
    ("Id", SD_UNIT), ("LoadState", SD_UNIT), ("ActiveState", SD_UNIT), ("SubState", SD_UNIT),
]
UNIT_NAME = re.compile(r"(?!-)[A-Za-z0-9:_.@-]{1,255}\.(service|socket|target|timer|path|mount)")
SD_SOCKET = "/run/systemd/private"
# systemctl's exit status for a refused call (translate_bus_error_to_exit_status, systemctl 252).
SD_ERROR_EXIT = {
    "org.freedesktop.DBus.Error.AccessDenied": 4,
    "org.freedesktop.systemd1.OnlyByDependency": 4,
    "org.freedesktop.systemd1.NoIsolation": 4,
    "org.freedesktop.systemd1.TransactionIsDestructive": 4,
    "org.freedesktop.systemd1.NoSuchUnit": 5,
    "org.freedesktop.systemd1.JobTypeNotApplicable": 3,
    "org.freedesktop.DBus.Error.NotSupported": 3,
    "org.freedesktop.systemd1.LoadFailed": 6,
}


class BusError(Exception):
    def __init__(self, name, message):
        Exception.__init__(self, name)
        self.name = name
        self.message = message


class BusLost(Exception):
    pass


class BusLate(Exception):
    pass


ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}
FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}


def sig_end(sig, i):
    # The index just past the single complete type that starts at sig[i].
    c = sig[i]
    if c == "a":
        return sig_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        i += 1
        while sig[i] != close:
            i = sig_end(sig, i)
        return i + 1
    if c in ALIGN:
        return i + 1
    raise Bad("signature")


class Reader:
    # D-Bus wire values of one message part (a header or a body: both start 8-aligned).
    def __init__(self, data, endian, pos=0):
        import struct
        self.struct = struct
        self.d = data
        self.e = endian
        self.p = pos

    def align(self, n):
        self.p += -self.p % n

    def take(self, n):
        if self.p + n > len(self.d):
            raise Bad("short message")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def values(self, sig):
        out, i = [], 0
        while i < len(sig):
            j = sig_end(sig, i)
            out.append(self.value(sig[i:j]))
            i = j
        return out

    def value(self, t):
        c = t[0]
        self.align(ALIGN[c])
        if c in FIXED:
            f = FIXED[c]
            v = self.struct.unpack(self.e + f, self.take(self.struct.calcsize(f)))[0]
            return bool(v) if c == "b" else v
        if c in "so":
            n = self.struct.unpack(self.e + "I", self.take(4))[0]
            v = self.take(n + 1)[:-1]
            return v.decode("utf-8", "replace")
        if c == "g":
            n = self.take(1)[0]
            return self.take(n + 1)[:-1].decode("ascii", "replace")
        if c == "v":
            return self.value(self.value("g"))
        if c == "a":
            n = self.struct.unpack(self.e + "I", self.take(4))[0]
            if n > 1 << 26:
                raise Bad("array")
            self.align(ALIGN[t[1]])
            end = self.p + n
            items = []
            while self.p < end:
                items.append(self.value(t[1:]))
            return items
        if c in "({":
            return self.values(t[1:-1])
        raise Bad("signature")


class Writer:
    def __init__(self):
        import struct
        self.struct = struct
        self.b = bytearray()

    def align(self, n):
        self.b += b"\0" * (-len(self.b) % n)

    def put(self, t, v):
        c = t[0]
        self.align(ALIGN[c])
        if c in FIXED:
            self.b += self.struct.pack("<" + FIXED[c], int(v))
        elif c in "so":
            e = v.encode("utf-8")
            self.b += self.struct.pack("<I", len(e)) + e + b"\0"
        elif c == "g":
            e = v.encode("ascii")
            self.b += bytes([len(e)]) + e + b"\0"
        elif c == "v":
            self.put("g", v[0])
            self.put(v[0], v[1])
        elif c == "a":
            at = len(self.b)
            self.b += b"\0\0\0\0"
            self.align(ALIGN[t[1]])
            start = len(self.b)
            for x in v:
                self.put(t[1:], x)
            self.b[at:at + 4] = self.struct.pack("<I", len(self.b) - start)
        elif c in "({":
            i = 1
            for x in v:
                j = sig_end(t, i)
                self.put(t[i:j], x)
                i = j
        else:
            raise Bad("signature")

    def puts(self, sig, args):
        i = 0
        for x in args:
            j = sig_end(sig, i)
            self.put(sig[i:j], x)
            i = j


class Bus:
    # A direct connection to systemd (no bus daemon between): systemd sends its signals to every
    # direct connection, JobRemoved among them, which is how a start or stop is waited for, as
    # systemctl waits. One connection serves the helper's whole session.
    def __init__(self, until):
        import socket
        self.until = until
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.s = s
        s.settimeout(self.left())
        s.connect(SD_SOCKET)
        # AUTH and BEGIN in one write, as systemctl sends them, and the first message only after
        # the answer: a message that reached systemd in the same read as BEGIN was left unread
        # (the call hung: seen 1 time in 4 when BEGIN was sent after the answer, with the call).
        s.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode("ascii").hex().encode("ascii") + b"\r\nBEGIN\r\n")
        got = b""
        while b"\r\n" not in got:
            s.settimeout(self.left())
            chunk = s.recv(512)
            if not chunk or len(got) > 4096:
                raise OSError("no answer to AUTH")
            got += chunk
        if not got.startswith(b"OK "):
            raise OSError("AUTH refused")
        self.serial = 0
        self.buf = got.partition(b"\r\n")[2]
        self.done = {}

    def left(self):
        # What is left of the command's time: one bound for the whole command (a reply, a job),
        # however many other messages arrive meanwhile.
        t = self.until - time.monotonic()
        if t <= 0:
            raise BusLate()
        return t

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def fill(self, n):
        while len(self.buf) < n:
            self.s.settimeout(self.left())
            chunk = self.s.recv(65536)
            if not chunk:
                raise BusLost()
            self.buf += chunk

    def message(self):
        # (type, header fields, body reader or None)
        import struct
        self.fill(16)
        e = "<" if self.buf[0:1] == b"l" else ">"
        mtype = self.buf[1]
        blen, _, flen = struct.unpack(e + "III", self.buf[4:16])
        hlen = 16 + flen + (-(16 + flen) % 8)
        if blen > 1 << 27 or flen > 1 << 16:
            raise BusLost()
        self.fill(hlen + blen)
        msg, self.buf = self.buf[:hlen + blen], self.buf[hlen + blen:]
        fields = dict((k, v) for k, v in Reader(msg, e, 12).value("a(yv)"))
        job_removed = mtype == 4 and fields.get(2) == SD_MANAGER and fields.get(3) == "JobRemoved"
        if mtype not in (2, 3) and not job_removed:
            return mtype, fields, []  # another signal (PropertiesChanged, …): its body is not read
        sig = fields.get(8, "")
        body = Reader(msg[hlen:], e).values(sig) if sig else []
        if job_removed and sig == "uoss":
            self.done[body[1]] = body[3]
        return mtype, fields, body

    def call(self, path, iface, member, sig="", args=()):
        self.serial += 1
        body = Writer()
        body.puts(sig, args)
        fields = [(1, ("o", path)), (2, ("s", iface)), (3, ("s", member)), (6, ("s", SD_DEST))]
        if sig:
            fields.append((8, ("g", sig)))
        head = Writer()
        head.b += b"l\x01\x00\x01"
        head.put("u", len(body.b))
        head.put("u", self.serial)
        head.put("a(yv)", fields)
        head.align(8)
        try:
            self.s.settimeout(self.left())
            self.s.sendall(bytes(head.b) + bytes(body.b))
            while True:
                mtype, f, b = self.message()
                if mtype in (2, 3) and f.get(5) == self.serial:
                    if mtype == 3:
                        raise BusError(f.get(4, ""), b[0] if b and isinstance(b[0], str) else "")
                    return b
        except TimeoutError:
            raise BusLate()
        except (OSError, LookupError, ValueError):
            raise BusLost()

    def wait_job(self, job):
        try:
            while job not in self.done:
                self.message()
        except TimeoutError:
            raise BusLate()
        except (OSError, LookupError, ValueError):
            raise BusLost()
        return self.done.pop(job)

    def unit_path(self, unit):
        return self.call(SD_PATH, SD_MANAGER, "LoadUnit", "s", [unit])[0]


BUS = []  # [Bus] while connected, [None] when systemd's socket did not answer (systemctl then)


def bus(timeout):
    until = time.monotonic() + timeout
    if BUS and BUS[0] is not None:
        BUS[0].until = until
    elif not BUS:
        try:
            BUS.append(Bus(until))
        except (OSError, Bad, BusLate):
            BUS.append(None)
    return BUS[0]


def bus_close():
    # Between batches, and through a soak: systemd sends every signal to every direct connection,
    # and a connection nobody reads fills its queue (past its bound systemd drops messages, a
    # JobRemoved among them). The next command connects again (well under a millisecond).
    if BUS and BUS[0] is not None:
        BUS[0].close()
    del BUS[:]


def systemctl_fast(args, timeout):
    # (code, out, err) as systemctl would answer 'args', or None: not a form answered here.
    verb = args[0] if args else ""
    if verb == "show":
        value = "--value" in args
        rest = [a for a in args[1:] if a != "--value"]
        if len(rest) != 2 or not rest[0].startswith("--property=") or not UNIT_NAME.fullmatch(rest[1]):
            return None
        wanted = rest[0][len("--property="):].split(",")
        known = dict(SHOW_PROPS)
        if not wanted or any(w not in known for w in wanted):
            return None
        units = [rest[1]]
        if not rest[1].endswith(".service"):
            return None  # the Service properties only; systemctl skips what another type lacks
    elif verb in ("start", "stop", "restart", "reset-failed"):
        units = args[1:]
        if not units or (verb == "reset-failed" and len(units) != 1):
            return None
    elif verb in ("enable", "disable"):
        if len(args) != 3 or args[1] != "--no-reload":
            return None
        units = args[2:]
    else:
        return None
    if not all(UNIT_NAME.fullmatch(u) for u in units):
        return None
    b = bus(timeout)
    if b is None:
        return None
    try:
        if verb == "show":
            path = b.unit_path(units[0])
            lines = []
            for name, iface in SHOW_PROPS:
                if name in wanted:
                    v = b.call(path, "org.freedesktop.DBus.Properties", "Get", "ss", [iface, name])[0]
                    v = ("yes" if v else "no") if isinstance(v, bool) else str(v)
                    lines.append(v if value else name + "=" + v)
            return 0, "".join(l + "\n" for l in lines).encode(), b""
        if verb == "enable":
            b.call(SD_PATH, SD_MANAGER, "EnableUnitFiles", "asbb", [units, False, False])
            return 0, b"", b""
        if verb == "disable":
            b.call(SD_PATH, SD_MANAGER, "DisableUnitFiles", "asb", [units, False])
            return 0, b"", b""
        if verb == "reset-failed":
            b.call(SD_PATH, SD_MANAGER, "ResetFailedUnit", "s", [units[0]])
            return 0, b"", b""
        method = {"start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit"}[verb]
        code, err, jobs = 0, [], {}
        for u in units:
            try:
                # The same job for a unit named twice (or an alias): waited for once, as systemctl does.
                jobs.setdefault(b.call(SD_PATH, SD_MANAGER, method, "ss", [u, "replace"])[0], u)
            except BusError as e:
                code = code or SD_ERROR_EXIT.get(e.name, 1)
                err.append("Failed to %s %s: %s\n" % (verb, u, e.message))
        for job, u in jobs.items():
            result = b.wait_job(job)
            # What systemctl counts as done (bus_wait_for_jobs): "done" and "skipped".
            if result not in ("done", "skipped"):
                code = 1  # a failed job wins over a refused call, as in systemctl
                err.append("Job for %s failed (result: %s).\n" % (u, result))
        return code, b"", "".join(err).encode()
    except BusError as e:
        if verb == "show":
            return 1, b"", ("Failed to get properties: %s\n" % e.message).encode()
        # reset-failed, enable and disable: 1, whatever the error (systemctl 252 maps only the
        # errors of a job's start).
        return 1, b"", ("Failed to %s unit: %s\n" % (verb, e.message)).encode()
    except BusLate:
        # The command's time is up (what a systemctl run past it gets: 124); the connection may
        # hold a half-read message, so the next command connects again.
        bus_close()
        return 124, b"", b"timed out\n"
    except (BusLost, Bad):
        # Never tried again: a job may have been queued. Later commands run systemctl.
        bus_close()
        BUS.append(None)
        return 1, b"", b"the connection to systemd was lost\n"


def healthy_path(unit):
    m = UNIT.fullmatch(unit)
    return HEALTHY_AT + m.group(1) if m else None


def forget_slot(unit):
    path = healthy_path(unit)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            # not a file (only root can put one there): never trusted either (remembered_healthy
            # reads a regular file only)
            pass


# systemctl verbs that change no unit, and those that change only what starts at boot unless given
# --now (the blue/green swap enables the new slot between its health check and its soak: that
# must keep the answer). Every other verb naming an agent slot (start, restart, reload-or-restart,
# try-restart, enable --now, ...) may make a new instance.
READ_ONLY_VERBS = ("show", "status", "is-active", "is-failed", "is-enabled", "cat", "list-units")
BOOT_VERBS = ("enable", "disable", "reenable")


def may_start(argv):
    verb = argv[1]
    if verb in READ_ONLY_VERBS:
        return False
    return not (verb in BOOT_VERBS and "--now" not in argv[2:])


def forget_healthy(argv):
    # What an agent slot's last health check judged no longer describes it once a command may have
    # started it again (review R28 finding 5: not only start and restart).
    if len(argv) > 1 and argv[0] == "systemctl" and may_start(argv):
        for u in argv[2:]:
            forget_slot(u)


def remember_healthy(unit, ident):
    path = healthy_path(unit)
    if not path or not BASELINE.fullmatch(ident):
        return
    tmp = path + ".tmp-" + os.urandom(8).hex()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (ident + "\n").encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        # not remembered: a re-run's soak then starts from what it finds, as before
        try:
            os.unlink(tmp)
        except OSError:
            pass


def remembered_healthy(unit):
    # A regular file only, opened without blocking (a FIFO there must not hold the helper, nor the
    # host's swap lock: review R28 finding 3); anything else, or nothing, is "-".
    import stat
    path = healthy_path(unit)
    if not path:
        return "-"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "-"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "-"
        v = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return "-"
    finally:
        os.close(fd)
    return v if BASELINE.fullmatch(v) else "-"


def run(argv, data=None, timeout=60):
    forget_healthy(argv)
    if argv and argv[0] == "systemctl" and data is None:
        fast = systemctl_fast(list(argv[1:]), timeout)
        if fast is not None:
            return fast
    try:
        # No input: end of file at once, never the helper's own standard input (in a session that is
        # the SSH channel, which carries the next requests, env files among them).
        p = subprocess.run(argv, input=data, stdin=None if data is not None else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return 124, b"", b"timed out\n"
    except OSError:
        return 127, b"", b"cannot run\n"


def unit_arg(u):
    if not UNIT.fullmatch(u):
        raise Bad("unit")
    return u


def int_arg(s, lo, hi):
    if not re.fullmatch(r"[0-9]{1,10}", s) or not lo <= int(s) <= hi:
        raise Bad("number")
    return int(s)


def props(unit, names):
    _, out, _ = run(["systemctl", "show", "--property=" + ",".join(names), unit])
    d = {}
    for line in out.decode("utf-8", "replace").splitlines():
        k, s, v = line.partition("=")
        if s:
            d[k] = v
    return d


def digests(args, data):
    import hashlib, hmac
    unit = unit_arg(args[0])
    p = props(unit, ["ActiveState", "MainPID"])
    pid = p.get("MainPID", "0")
    pid = int(pid) if pid.isdigit() else 0
    if p.get("ActiveState") != "active" or pid < 2:
        return 3, b""
    key = bytes.fromhex(data.decode("ascii").split("\n")[0].strip())
    if len(key) < 16:
        raise Bad("nonce")
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return 3, b""
    out = []
    for e in raw.split(b"\0"):
        n, s, v = e.partition(b"=")
        if s:
            out.append(n.decode("ascii", "replace") + " " + hmac.new(key, v, hashlib.sha256).hexdigest() + "\n")
    return 0, "".join(out).encode()


class Late(Exception):
    pass


def expire(signum, frame):
    raise Late()


HEAD_END = re.compile(rb"\r?\n\r?\n")


def probe(port, path):
    # Whatever listens on the port may be hostile (the other slot's agent can bind it first): one
    # probe takes 3 s in all however slowly it trickles its answer (a socket timeout bounds each
    # read only), and at most 64 KiB of the answer is read. The status counts once the head is
    # complete (lines ended by CRLF or LF, as http.client took them); the body is then read to its
    # end within what is left of both bounds, and a body cut by them still leaves the status. A plain
    # HTTP/1.0 GET on a socket: http.client alone cost the helper 34 ms of imports (ssl, email).
    import signal, socket
    old = signal.signal(signal.SIGALRM, expire)
    status = 0
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, 3)
            c = socket.create_connection(("127.0.0.1", port), timeout=3)
            try:
                c.sendall(("GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (path, port)).encode("ascii"))
                got = b""
                while len(got) < 65536:
                    if not status and HEAD_END.search(got):
                        m = re.match(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r\n]", got)
                        if not m:
                            break
                        status = int(m.group(1))
                    b = c.recv(65536 - len(got))
                    if not b:
                        break
                    got += b
                if not status and HEAD_END.search(got):
                    m = re.match(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r\n]", got)
                    status = int(m.group(1)) if m else 0
            finally:
                c.close()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Exception:
        return status
    finally:
        signal.signal(signal.SIGALRM, old)
    return status


IDENTITY = ["NRestarts", "ExecMainStartTimestampMonotonic", "ActiveState", "SubState"]
BASELINE = re.compile(r"[0-9]{1,10}:[0-9]{0,20}")


def identity(p):
    # "<NRestarts>:<ExecMainStartTimestampMonotonic>" (the main process's start, empty when not
    # known) or "-" when the restart count cannot be read; and the state words.
    r = p.get("NRestarts", "")
    m = p.get("ExecMainStartTimestampMonotonic", "")
    words = [p.get(k, "") for k in ("ActiveState", "SubState")]
    state = "/".join(w for w in words if STATE_WORD.fullmatch(w)) or "unknown"
    return (r + ":" + (m if m.isdigit() and len(m) <= 20 else "") if r.isdigit() and len(r) <= 10 else "-"), state


def wait_healthy(args, data):
    unit = unit_arg(args[0])
    port = int_arg(args[1], 1, 65535)
    if not HTTP_PATH.fullmatch(args[2]):
        raise Bad("path")
    ms = int_arg(args[3], 0, 3600000)
    start = time.monotonic()
    until = start + ms / 1000
    # A probe every 100 ms for the first 2 s (an agent that starts fast is seen at once), then every
    # 250 ms; the unit's state (a systemctl start-up each, ~10 ms of CPU) every second. On a host
    # starved of CPU an agent can take 10 s to answer, and this polling was then most of the swap's
    # cost (50 swaps at once on 2 cores: the helper's session 0.54 core-s per swap, 0.28 at 10).
    next_state = start
    while True:
        now = time.monotonic()
        in_time = now < until
        if probe(port, args[2]) == 200 and in_time:
            # The moment it is judged healthy: which process that was (its restart count and its main
            # process's start), read at once (a crash after the answer is restarted RestartSec, 1 s,
            # later at the earliest), for the soak to compare with: a restart between this answer
            # and the soak's start (during the route switch) is a restart after the health check.
            ident = identity(props(unit, IDENTITY))[0]
            remember_healthy(unit, ident)
            return 0, ("healthy %s\n" % ident).encode()
        now = time.monotonic()
        late = now >= until
        if now >= next_state or late:
            next_state = now + 1.0
            p = props(unit, ["NRestarts", "ActiveState", "SubState", "Result", "ExecMainStatus"])
            words = [p.get(k, "") for k in ("ActiveState", "SubState", "Result", "ExecMainStatus")]
            state = "/".join(w for w in words if STATE_WORD.fullmatch(w)) or "unknown"
            r = p.get("NRestarts", "")
            restarts = int(r) if r.isdigit() else -1
            if restarts >= 3 or state.startswith("failed"):
                return 1, ("crashloop %d %s\n" % (restarts, state)).encode()
            if late:
                return 2, ("timeout %s\n" % state).encode()
        time.sleep(0.1 if now - start < 2 else 0.25)


def established(port):
    # ESTABLISHED TCP connections whose local port is 'port' (the connections an instance accepted
    # and has not closed: what 'ss -t state established ( sport = :port )' lists), read from
    # /proc/net/tcp and tcp6 instead of an ss start every poll. -1: not known (then not drained).
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                f.readline()
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "01" and int(parts[1].rpartition(":")[2], 16) == port:
                        n += 1
        except FileNotFoundError:
            if name == "/proc/net/tcp":
                return -1
        except (OSError, ValueError):
            return -1
    return n


SOAK_EVERY_S = 0.25
SOAK_FAILS = 3


def soak(args, data):
    # Once answered, the remembered health answer has served this instance's soak: a later soak
    # (of a later swap) compares only with a later answer (review R28 finding 2). A soak cut before
    # it answers (the connection gone: os._exit below) leaves it for the re-run.
    r = soak_checks(args, data)
    forget_slot(args[0])
    return r


def soak_checks(args, data):
    # After traffic moved to a new instance: it must stay healthy while the old one drains. GET
    # <path> on its port every 250 ms; SOAK_FAILS failed probes in a row, or any restart of its unit
    # since 'baseline' (what wait-healthy printed when it judged the instance healthy: NRestarts and
    # the main process's start; '-' or absent, a re-run after a cut whose first run's answer is
    # gone: what this host remembers wait-healthy judged healthy for the slot (HEALTHY_AT), else
    # read at the soak's start), or a unit not active/running at the end, is
    # 'unhealthy ...' (exit 1: the old instance still runs, the swap routes back to it). A restart
    # before the soak starts (between the health check and the route switch) fails it at once.
    # Otherwise it ends once 'soak ms' have passed and no connection is left to 'old port'
    # ('drained'; 0: no old instance, 'soaked'), or once 'drain ms' have passed ('drain-timeout
    # <connections left>'), always on a good probe (a failed last one is asked again: at most
    # SOAK_FAILS - 1 probes past those bounds). It exits at once when the connection it answers on
    # is gone.
    unit = unit_arg(args[0])
    port = int_arg(args[1], 1, 65535)
    if not HTTP_PATH.fullmatch(args[2]):
        raise Bad("path")
    soak_ms = int_arg(args[3], 0, 600000)
    old_port = int_arg(args[4], 0, 65535)
    drain_ms = int_arg(args[5], 0, 3600000)
    if old_port == port:
        raise Bad("old port")
    baseline = args[6] if len(args) > 6 else "-"
    if baseline != "-" and not BASELINE.fullmatch(baseline):
        raise Bad("baseline")
    if baseline == "-":
        # a re-run after a cut: what the cut run's health check judged healthy, when this host
        # remembers it for this slot (and the unit was not started again since)
        baseline = remembered_healthy(unit)

    def restarted(now):
        # None when 'now' is the process judged healthy, else the restarts to report (-1: unknown).
        if baseline == "-" or now == "-":
            return -1
        if now == baseline:
            return None
        grew = int(now.partition(":")[0]) - int(baseline.partition(":")[0])
        return grew if grew > 0 else 1

    # The connection this answers on: once its reader is gone (the SSH channel closed) nobody waits
    # for the answer, and the host's swap lock must not be held to the end of the soak.
    import select
    hangup = select.poll()
    hangup.register(1, select.POLLERR | select.POLLHUP)
    start = time.monotonic()
    soak_until = start + soak_ms / 1000
    drain_until = start + max(soak_ms, drain_ms) / 1000
    now, state = identity(props(unit, IDENTITY))
    if baseline == "-":
        baseline = now
    n = restarted(now)
    if n is not None:
        return 1, ("unhealthy restarts %d %s\n" % (n, state)).encode()
    bus_close()  # not read until the end: no queue of signals meanwhile
    fails = 0
    while True:
        if hangup.poll(0):
            os._exit(141)
        if probe(port, args[2]) == 200:
            fails = 0
        else:
            fails += 1
            if fails >= SOAK_FAILS:
                _, state = identity(props(unit, IDENTITY))
                return 1, ("unhealthy probes %d %s\n" % (fails, state)).encode()
        t = time.monotonic()
        # It ends on a good probe only: a failed one is asked again until it answers or fails
        # SOAK_FAILS times in a row.
        if t >= soak_until and fails == 0:
            left = established(old_port) if old_port else 0
            if left == 0 or t >= drain_until:
                now, state = identity(props(unit, IDENTITY))
                n = restarted(now)
                if n is not None:
                    return 1, ("unhealthy restarts %d %s\n" % (n, state)).encode()
                if state != "active/running":
                    return 1, ("unhealthy state 0 %s\n" % state).encode()
                if not old_port:
                    return 0, b"soaked\n"
                return 0, (b"drained\n" if left == 0 else ("drain-timeout %d\n" % left).encode())
        time.sleep(SOAK_EVERY_S)


def port_holders(args, data):
    port = int_arg(args[0], 1, 65535)
    code, out, _ = run(["ss", "-H", "-l", "-t", "-n", "-p", "( sport = :%d )" % port])
    if code != 0:
        return 1, b""
    ss = out.decode("utf-8", "replace")
    cgroups = {}
    for pid in sorted(set(int(m) for m in re.findall(r"\bpid=(\d{1,10})\b", ss))):
        try:
            with open("/proc/%d/cgroup" % pid) as f:
                cgroups[str(pid)] = f.read(65536)
        except OSError:
            cgroups[str(pid)] = ""
    return 0, json.dumps({"ss": ss, "cgroups": cgroups}).encode()


def write_atomic(name, body):
    import stat
    try:
        st = os.lstat(ENV_DIR)
    except FileNotFoundError:
        os.mkdir(ENV_DIR, 0o700)
        st = os.lstat(ENV_DIR)
    if not stat.S_ISDIR(st.st_mode):
        raise Bad("directory")
    if st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != 0o700:
        os.chown(ENV_DIR, 0, 0, follow_symlinks=False)
        os.chmod(ENV_DIR, 0o700)
        st = os.lstat(ENV_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != 0o700:
            raise Bad("directory")
    for f in os.listdir(ENV_DIR):
        if re.fullmatch(re.escape("." + name + ".tmp-") + "[0-9a-f]{16}", f):
            os.unlink(ENV_DIR + "/" + f)
    path = ENV_DIR + "/" + name
    tmp = ENV_DIR + "/." + name + ".tmp-" + os.urandom(8).hex()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(ENV_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != 0o600 or st.st_size != len(body):
        raise Bad("written file")
    return 0, b""


def write_record(args, data):
    if args[0] not in ("blue", "green"):
        raise Bad("slot")
    return write_atomic("active-slot", (args[0] + "\n").encode())


def write_env(args, data):
    if args[0] not in ("blue", "green"):
        raise Bad("slot")
    if not 0 < len(data) <= 1048576:
        raise Bad("size")
    return write_atomic("agent-" + args[0] + ".env", data)


HELPERS = {
    "digests": digests,
    "wait-healthy": wait_healthy,
    "port-holders": port_holders,
    "soak": soak,
    "write-record": write_record,
    "write-env": write_env,
}


def call(mode, args, data):
    try:
        return HELPERS[mode](args, data) + (b"",)
    except Exception as e:
        return 64 if isinstance(e, Bad) else 1, b"", (type(e).__name__ + "\n").encode()


def b64(b):
    return binascii.b2a_base64(b, newline=False).decode("ascii")


def take_lock():
    # One batch (or session) at a time on a host: a batch whose connection was cut runs on until its
    # next answer cannot be written, and must not overlap the batches of the run that follows.
    import fcntl
    lock = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def emit(line):
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(141)


def run_steps(steps, data):
    for step in steps:
        poll = step.get("poll")
        until = time.monotonic() + poll["forMs"] / 1000 if poll else 0
        match = step.get("match")
        step_in = data if step.get("stdin") else None
        while True:
            if "helper" in step:
                code, out, err = call(step["helper"][0], step["helper"][1:], step_in or b"")
            else:
                code, out, err = run(step["argv"], step_in)
            met = code == 0 and (match is None or re.search(match, out.decode("utf-8", "replace")) is not None)
            if met or not poll or time.monotonic() >= until:
                break
            time.sleep(poll["everyMs"] / 1000)
        emit(json.dumps({"code": code, "out": b64(out), "err": b64(err[-2000:])}) + "\n")
        if step.get("required") and not met:
            break
    bus_close()


def batch(program, data):
    take_lock()  # held until exit
    run_steps(json.loads(program)["steps"], data)
    return 0


SESSION_IDLE_S = 60


def session():
    # One helper for a whole swap (each of its phases was a python3 start of its own): requests are
    # lines on standard input, {"program": <a batch program>, "data": <base64 standard input>}; the
    # answers are the batch's lines, then {"end": true}. The lock is held for the session's life;
    # it ends at end of input, at a line that is not a request, or after SESSION_IDLE_S without one
    # (a connection that died silently must not hold the host's lock).
    import select
    take_lock()
    buf = b""
    while True:
        while b"\n" not in buf:
            ready, _, _ = select.select([0], [], [], SESSION_IDLE_S)
            if not ready:
                return 0
            chunk = os.read(0, 65536)
            if not chunk:
                return 0 if not buf else 64
            buf += chunk
            if len(buf) > 4 * 1048576:
                return 64
        line, _, buf = buf.partition(b"\n")
        try:
            req = json.loads(line)
            steps = json.loads(req["program"])["steps"]
            data = binascii.a2b_base64(req.get("data", ""))
        except Exception:
            return 64
        finally:
            line = req = chunk = None
        run_steps(steps, data)
        data = None
        emit('{"end": true}\n')


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "session":
        sys.exit(session())
    data = sys.stdin.buffer.read() if mode in ("batch", "digests", "write-env") else b""
    if mode == "batch":
        sys.exit(batch(args[0], data))
    code, out, err = call(mode, args, data)
    sys.stdout.buffer.write(out)
    sys.stderr.buffer.write(err)
    sys.exit(code)


main()
`;
