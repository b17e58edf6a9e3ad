#!/usr/bin/python3
"""Cortex `echo` agent runtime: the default for local mode and the demo.

A tiny HTTP service on 127.0.0.1 (Caddy proxies to it, so anyone on the internet reaches it):

- GET /health: `{"status": "ok", "runtime": "echo", "env": [{"name": ...}, ...]}`, the NAMES of the
  variables it received from its environment file. Nothing derived from a value: an unsalted hash
  of a key would let anyone confirm a guessed key, so no value, hash, length or prefix is ever
  returned, logged or stored. (Tests read the values from /proc/<pid>/environ as root instead.)
- GET /slow?ms=N: answers after N milliseconds (0-10000, below the unit's TimeoutStopSec), so a
  test can hold a request open across a restart or a blue/green switch.

On SIGTERM it stops accepting connections and finishes the requests in flight before exiting 0.
Python standard library only.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SLOW_MAX_MS = 10_000

# Names set by the service manager or a loader, which the env file may not use either: the one list
# shared with orchestrator/remote/env-file.ts, shipped beside this file.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reserved-env-names.json"), "rb") as f:
    _RESERVED = json.load(f)
HIDDEN_NAMES = frozenset(_RESERVED["names"])
HIDDEN_PREFIXES = tuple(_RESERVED["prefixes"])


def env_names():
    names = []
    for raw in sorted(os.environb):
        name = raw.decode("utf-8", "replace")
        if name in HIDDEN_NAMES or name.startswith(HIDDEN_PREFIXES):
            continue
        names.append({"name": name})
    return names


class Handler(BaseHTTPRequestHandler):
    server_version = "cortex-echo"
    sys_version = ""
    # HTTP/1.0: one request per connection, so no idle keep-alive connection holds up a drain.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            self.reply(200, {"status": "ok", "runtime": "echo", "env": env_names()})
        elif url.path == "/slow":
            ms = parse_qs(url.query, keep_blank_values=True).get("ms", ["1000"])[-1]
            if not ms.isdigit() or int(ms) > SLOW_MAX_MS:
                self.reply(400, {"status": "bad_request", "error": "ms must be 0-%d" % SLOW_MAX_MS})
                return
            time.sleep(int(ms) / 1000)
            self.reply(200, {"status": "ok", "sleptMs": int(ms)})
        else:
            self.reply(404, {"status": "not_found"})

    def reply(self, status, payload):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # Method, path and status only: no headers, no bodies.
        sys.stderr.write("%s\n" % (fmt % args))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    # Non-daemon request threads, joined by server_close(): a SIGTERM drains what is in flight.
    server.daemon_threads = False
    server.block_on_close = True

    def on_term(_signum, _frame):
        # shutdown() waits for serve_forever() to return, which runs in this (the main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    sys.stderr.write("cortex echo agent listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    server.serve_forever()
    # Stop accepting, then wait for the requests in flight.
    server.socket.close()
    server.server_close()
    sys.stderr.write("cortex echo agent stopped\n")


if __name__ == "__main__":
    main()
