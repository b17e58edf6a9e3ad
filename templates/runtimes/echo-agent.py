#!/usr/bin/python3
"""Cortex `echo` agent runtime (local mode, demo), Python stdlib only, on 127.0.0.1 behind Caddy.

GET /health: {"status": "ok", "runtime": "echo", "env": [{"name": ...}]}, the NAMES of its env
variables, reserved ones hidden; nothing derived from a value (no value, hash, length or prefix).
GET /slow?ms=N (0-10000, default 1000, the last wins) answers after N ms. 404 other paths, 501
other methods, 400 malformed. HTTP/1.0 (no keep-alive to hold a drain), JSON, no-store.
Every byte is hostile: heads over 8 KiB get 414/431, heads not sent within 10 s 408, at most 512
connections, at most 256 of them waiting in /slow (503 beyond; a client that hangs up frees its
place at once). SIGTERM: closes the listening socket, finishes what is in flight, exits 0.

One epoll loop, no thread, over C modules (_socket, _signal, _json): socket, signal, threading,
json, http.server cost 100 ms of CPU in imports, and one process starts per blue/green swap.
CPU by scripts/echo-agent-cost.py (local-host image's python3 3.11.2, bare start 18-20 ms):
start, first /health, SIGTERM: 104-124 ms with http.server, 26-27 ms now; a request 0.44-0.58
ms then, 0.13-0.15 ms now.
"""
import os
import select
import sys
import time

import _signal
import _socket
from _heapq import heappop, heappush
from _json import encode_basestring_ascii, make_scanner

SLOW_MAX_MS = 10_000
HEAD_MAX = 8192
TIMEOUT = 10.0  # to send the request head; to take the answer
DRAIN_TIMEOUT = 2.0  # to send the head once SIGTERM came
LINGER = 2.0, 65536  # after answering a request with a body: read and drop it this long, this much
MAX_CONNECTIONS = 512
# /slow holds its connection for up to SLOW_MAX_MS: at most half the connections may wait in it (503
# beyond), so /health always has room, whatever a client holds open through Caddy (review R10 F1).
MAX_SLOW = MAX_CONNECTIONS // 2
READ, WAIT, WRITE, DROP = range(4)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 414: "URI Too Long"}
REASONS.update({431: "Request Header Fields Too Large", 501: "Not Implemented", 503: "Service Unavailable"})
REASONS[505] = "HTTP Version Not Supported"
BAD_SLOW = b'{"status": "bad_request", "error": "ms must be 0-%d"}' % SLOW_MAX_MS
HEX = frozenset(b"0123456789abcdefABCDEF")
LOG_ESCAPES = {i: "\\x%02x" % i for i in (*range(32), 127)}
USAGE = "usage: echo-agent.py --port=N [--bind=ADDRESS]\n"


class JsonContext:  # what _json.make_scanner reads: json.loads' defaults
    strict, parse_float, parse_int = True, float, int
    object_hook = object_pairs_hook = parse_constant = None


def health_body(reserved_path):
    """Built once: the environment does not change. Byte for byte json.dumps' output."""
    with open(reserved_path, "rb") as f:  # the one list, shared with orchestrator/remote/env-file.ts
        reserved = make_scanner(JsonContext)(f.read().decode("utf-8").strip(), 0)[0]
    hidden, prefixes = frozenset(reserved["names"]), tuple(reserved["prefixes"])
    names = [n.decode("utf-8", "replace") for n in sorted(os.environb)]
    names = [n for n in names if not (n in hidden or n.startswith(prefixes))]
    env = ", ".join('{"name": %s}' % encode_basestring_ascii(n) for n in names)
    return ('{"status": "ok", "runtime": "echo", "env": [%s]}' % env).encode("ascii")


def unquote(b):
    """urllib.parse.unquote_plus on bytes: + is a space, %XY a byte, any other % itself."""
    parts = b.replace(b"+", b" ").split(b"%")
    return parts[0] + b"".join(
        bytes((int(p[:2], 16),)) + p[2:] if len(p) >= 2 and p[0] in HEX and p[1] in HEX else b"%" + p
        for p in parts[1:]
    )


def slow_ms(query):
    """ms as parse_qs(query, keep_blank_values=True)["ms"][-1] reads it, or None if not 0-10000."""
    value = b"1000"
    for field in query.split(b"&"):
        name, _, v = field.partition(b"=")
        if name and unquote(name) == b"ms":
            value = unquote(v)
    value = value.lstrip(b"0") or value  # bytes.isdigit(): ASCII only; "", "-1", "1e3" fail
    return int(value) if value.isdigit() and len(value) <= 5 and int(value) <= SLOW_MAX_MS else None


def printable(b):
    return b[:200].decode("ascii", "backslashreplace").translate(LOG_ESCAPES)


def log(line):
    try:
        os.write(2, line.encode("ascii", "backslashreplace") + b"\n")
    except OSError:
        pass


class Conn:
    __slots__ = ("sock", "fd", "buf", "state", "deadline", "mask", "out", "drop", "closed", "ms", "what")

    def __init__(self, sock):
        self.sock, self.fd, self.buf, self.state, self.deadline = sock, sock.fileno(), b"", READ, 0.0
        self.mask, self.out, self.drop, self.closed, self.ms, self.what = 0, b"", False, False, 0, None


class Server:
    stop_requested = False  # set by the SIGTERM handler (installed before binding), read by the loop

    def __init__(self, listener, family, health):
        self.listener, self.family, self.health = listener, family, health
        self.ep, self.conns, self.timers, self.seq = select.epoll(), {}, [], 0
        self.accepting = self.stopping = False
        # A signal wakes epoll through this pipe (the handler itself only sets the flag).
        self.wake, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.ep.register(self.wake, select.EPOLLIN)

    def run(self):
        while True:
            if Server.stop_requested and not self.stopping:
                self.stop()
            if self.stopping and not self.conns:
                return
            if self.listener:  # new clients wait in the backlog while at the bound
                self.listen(len(self.conns) < MAX_CONNECTIONS)
            timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else -1
            for fd, _ in self.ep.poll(timeout):
                if fd == self.wake:
                    try:
                        os.read(self.wake, 4096)
                    except BlockingIOError:
                        pass
                elif self.listener and fd == self.listener.fileno():
                    self.accept()
                elif fd in self.conns:  # may be a new connection on a just closed one's fd: harmless
                    self.guarded(self.on_event, self.conns[fd])
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                deadline, _, c = heappop(self.timers)
                if not c.closed and c.deadline == deadline:  # else stale: moved on or closed
                    self.guarded(self.on_deadline, c)

    def guarded(self, handler, c):
        try:
            handler(c)
        except Exception as e:  # one connection's surprise ends it, never the server
            log("- - error %s" % type(e).__name__)
            self.close(c)

    def listen(self, on):
        if on and not self.accepting:
            self.ep.register(self.listener.fileno(), select.EPOLLIN)
        elif self.accepting and not on:
            self.ep.unregister(self.listener.fileno())
        self.accepting = on

    def accept(self):
        for _ in range(64):
            if len(self.conns) >= MAX_CONNECTIONS:
                return
            try:
                fd, _ = self.listener._accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (12, 23, 24, 105):  # ENOMEM, ENFILE, EMFILE, ENOBUFS: a pause
                    return time.sleep(0.1)
                continue  # that client is gone already
            c = Conn(_socket.socket(self.family, _socket.SOCK_STREAM, 0, fd))
            c.sock.setblocking(False)
            self.conns[fd] = c
            self.set_deadline(c, time.monotonic() + TIMEOUT)
            self.guarded(self.read_head, c)  # the request is often there already
            if c.state == READ and not c.closed:
                self.want(c, select.EPOLLIN)
        return None

    def stop(self):
        self.stopping = True
        self.accept()  # connected before the SIGTERM: served
        self.listen(False)
        self.listener.close()
        self.listener = None  # new connections are refused
        latest = time.monotonic() + DRAIN_TIMEOUT
        for c in list(self.conns.values()):
            if c.state == READ and c.deadline > latest:
                self.set_deadline(c, latest)

    def set_deadline(self, c, deadline):
        c.deadline, self.seq = deadline, self.seq + 1
        heappush(self.timers, (deadline, self.seq, c))

    def want(self, c, mask):
        if mask != c.mask:
            if not mask:
                self.ep.unregister(c.fd)
            else:
                (self.ep.modify if c.mask else self.ep.register)(c.fd, mask)
            c.mask = mask

    def close(self, c):
        if not c.closed:
            c.closed = True
            self.want(c, 0)
            del self.conns[c.fd]
            c.sock.close()

    def on_event(self, c):
        if c.state == READ:
            self.read_head(c)
        elif c.state == WRITE:
            self.write(c)
        elif c.state == WAIT:
            # Registered for the peer's hang-up only: the client left before its answer, and its
            # connection is not held to the end of the wait.
            self.close(c)
        elif c.state == DROP:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            c.ms += len(data)
            if not data or c.ms > LINGER[1]:
                self.close(c)

    def on_deadline(self, c):
        if c.state == READ:
            self.respond(c, 408)
        elif c.state == WAIT:
            self.respond(c, 200, b'{"status": "ok", "sleptMs": %d}' % c.ms)
        else:
            self.close(c)

    def read_head(self, c):
        try:
            data = c.sock.recv(HEAD_MAX + 1)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return self.close(c)  # gone before a whole request: nobody to answer
        start, c.buf = max(0, len(c.buf) - 2), c.buf + data
        # The blank line that ends the head (CRLF or bare LF lines).
        ends = [i + n for i, n in ((c.buf.find(b"\n\r\n", start), 3), (c.buf.find(b"\n\n", start), 2)) if i >= 0]
        end = min(ends, default=HEAD_MAX + 1)
        if end <= HEAD_MAX:
            return self.route(c, c.buf[:end], len(c.buf) > end)
        if len(c.buf) > HEAD_MAX:
            c.drop = True  # the rest may be on its way
            return self.respond(c, 431 if b"\n" in c.buf[:HEAD_MAX] else 414)
        return None

    def route(self, c, head, more):
        # Bytes after the head (a body) are read and dropped before closing: a close with unread
        # bytes resets the connection, and the client may lose the answer.
        lower = head.lower()
        c.drop = more or b"\ncontent-length:" in lower or b"\ntransfer-encoding:" in lower
        parts = head[: head.find(b"\n")].removesuffix(b"\r").split(b" ")
        if len(parts) != 3:
            return self.respond(c, 400)
        method, target, version = parts
        path, _, query = target.partition(b"#")[0].partition(b"?")
        c.what = (method, path)
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            return self.respond(c, 505 if version.startswith(b"HTTP/") else 400)
        if method != b"GET":
            return self.respond(c, 501 if method.isalpha() else 400)
        if path == b"/health":
            return self.respond(c, 200, self.health)
        if path != b"/slow":
            return self.respond(c, 404 if path.startswith(b"/") else 400)
        c.ms = slow_ms(query)
        if c.ms is None:
            return self.respond(c, 400, BAD_SLOW)
        if sum(1 for o in self.conns.values() if o.state == WAIT) >= MAX_SLOW:
            return self.respond(c, 503)
        c.state = WAIT
        self.want(c, select.EPOLLRDHUP)
        return self.set_deadline(c, time.monotonic() + c.ms / 1000)

    def respond(self, c, status, body=None):
        # Method, path and status only: no query, header or body. No successful GET /health: the
        # orchestrator and Caddy probe it every 250 ms, which would flood journald.
        method, path = c.what or (b"-", b"-")
        if not (status == 200 and path == b"/health"):
            log("%s %s %d" % (printable(method[:16]), printable(path), status))
        if body is None:
            body = b'{"status": "%s"}' % REASONS[status].lower().replace(" ", "_").encode()
        # LC_TIME stays "C" (Python sets LC_CTYPE only): English day and month names.
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
        head = "HTTP/1.0 %d %s\r\nServer: cortex-echo\r\n" % (status, REASONS[status])
        c.out = head.encode() + b"Date: %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n" % date
        c.out += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        c.state = WRITE
        self.set_deadline(c, time.monotonic() + TIMEOUT)
        self.write(c)

    def write(self, c):
        try:
            c.out = c.out[c.sock.send(c.out) :]
        except BlockingIOError:
            pass
        except OSError:
            return self.close(c)
        if c.out:
            return self.want(c, select.EPOLLOUT)
        if not c.drop:
            return self.close(c)
        try:
            c.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            return self.close(c)
        c.state, c.ms = DROP, 0
        self.set_deadline(c, time.monotonic() + LINGER[0])
        return self.want(c, select.EPOLLIN)


def fail(message):
    sys.stderr.write(USAGE + "echo-agent.py: error: " + message + "\n")
    sys.exit(2)


def parse_args(argv):
    opts = {"--port": None, "--bind": "127.0.0.1"}
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name not in opts or not eq:
            fail("unknown argument %r" % arg)
        opts[name] = value
    port, bind = opts["--port"], opts["--bind"]
    if port is None:
        fail("--port is required")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        fail("--port must be a number from 1 to 65535, not %r" % port)
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, bind)
            return int(port), bind, family
        except (OSError, ValueError):  # ValueError: a byte no address has
            pass
    return fail("--bind must be an IPv4 or IPv6 address, not %r" % bind)


def on_signal(_signum, _frame):
    Server.stop_requested = True


def main():
    _signal.signal(_signal.SIGTERM, on_signal)
    _signal.signal(_signal.SIGINT, on_signal)
    port, bind, family = parse_args(sys.argv[1:])
    health = health_body(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reserved-env-names.json"))
    listener = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(128)
    except OSError as e:
        sys.stderr.write("echo-agent.py: cannot listen on %s port %d: %s\n" % (bind, port, e.strerror))
        sys.exit(1)
    listener.setblocking(False)
    log("cortex echo agent listening on %s port %d" % (bind, port))
    Server(listener, family, health).run()
    log("cortex echo agent stopped")


if __name__ == "__main__":
    main()
