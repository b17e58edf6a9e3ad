#!/usr/bin/python3
"""Cortex `echo` agent runtime: the default for local mode and the demo.

A tiny HTTP service on 127.0.0.1 (Caddy proxies to it) with one endpoint, GET /health, that
reports the NAMES and SHA-256 fingerprints (hex, of the exact bytes) of the variables it received
from its environment file. It never returns, logs or stores a value. Python standard library only.
"""
import argparse
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Set by the service manager or the unit, not by the env file (which may not use these names):
# kept equal to RESERVED_ENV_NAMES / RESERVED_PREFIXES in orchestrator/remote/env-file.ts.
HIDDEN_NAMES = frozenset([
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "PWD",
    "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", "NOTIFY_SOCKET", "MAINPID", "MANAGERPID",
    "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC",
    "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "CREDENTIALS_DIRECTORY", "XDG_RUNTIME_DIR", "TZ", "MEMORY_PRESSURE_WATCH", "MEMORY_PRESSURE_WRITE",
])
HIDDEN_PREFIXES = ("LD_", "LC_", "SYSTEMD_")


def report():
    env = []
    for name in sorted(os.environb):
        text = name.decode("utf-8", "replace")
        if text in HIDDEN_NAMES or text.startswith(HIDDEN_PREFIXES):
            continue
        env.append({"name": text, "sha256": hashlib.sha256(os.environb[name]).hexdigest()})
    return {"status": "ok", "runtime": "echo", "env": env}


class Handler(BaseHTTPRequestHandler):
    server_version = "cortex-echo"
    sys_version = ""

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/health":
            self.reply(200, report())
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
    server.daemon_threads = True
    sys.stderr.write("cortex echo agent listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
