#!/usr/bin/python3
"""CPU cost of the echo agent (templates/runtimes/echo-agent.py): what one blue/green swap pays to
start it and each request costs it. Not run by any test; a measurement tool.

  python3 scripts/echo-agent-cost.py AGENT PORT [RUNS [REQUESTS]]

- start-up: RUNS times, start `/usr/bin/python3 -I AGENT --port=PORT` (as the unit does), GET
  /health until 200, SIGTERM, wait: the child's rusage (user + sys); median, min, max.
- per request: REQUESTS sequential GET /health, then GET /other (logged), one connection each; the
  agent's utime + stime from /proc/<pid>/stat before and after (clock ticks: 10 ms resolution).
The agent's stderr goes to /dev/null (no journald cost counted).

To measure with the local-host image's interpreter rather than the dev box's (whose site .pth files
import more), run it in a private mount namespace chrooted into the image, e.g. with the agent and
reserved-env-names.json copied to /tmp/m:
  R=.local/image/current/rootfs; unshare -m sh -c "mount --bind /tmp/m $R/mnt &&
    mount -t proc proc $R/proc && chroot $R /usr/bin/python3 /mnt/echo-agent-cost.py /mnt/echo-agent.py 18555 10 2000"
"""
import os
import signal
import socket
import statistics
import sys
import time

PY = "/usr/bin/python3"


def get(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: cost\r\nAccept: */*\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return int(data.split(b" ", 2)[1])


def spawn(agent, port):
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 2), (os.POSIX_SPAWN_DUP2, null, 1)]
    pid = os.posix_spawn(PY, [PY, "-I", agent, "--port=%d" % port], {"ONE": "1"}, file_actions=actions)
    os.close(null)
    for _ in range(2000):
        try:
            if get(port, "/health") == 200:
                return pid
        except OSError:
            time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    raise SystemExit("the agent did not answer")


def ticks(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def main():
    agent, port = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    starts = []
    for _ in range(runs):
        pid = spawn(agent, port)
        os.kill(pid, signal.SIGTERM)
        _, status, ru = os.wait4(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("the agent exited %d on SIGTERM" % os.waitstatus_to_exitcode(status))
        starts.append((ru.ru_utime + ru.ru_stime) * 1000)
    print(
        "start-up to the first /health 200, SIGTERM and exit, %d runs: median %.1f ms, min %.1f, max %.1f of CPU"
        % (runs, statistics.median(starts), min(starts), max(starts))
    )
    hz = os.sysconf("SC_CLK_TCK")
    for path in ("/health", "/other"):
        pid = spawn(agent, port)
        t0, w0 = ticks(pid), time.monotonic()
        for _ in range(n):
            get(port, path)
        cpu, wall = (ticks(pid) - t0) * 1000 / hz, time.monotonic() - w0
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        print("%d x GET %s: agent CPU %.0f ms = %.3f ms/request (wall %.2f s)" % (n, path, cpu, cpu / n, wall))


if __name__ == "__main__":
    main()
