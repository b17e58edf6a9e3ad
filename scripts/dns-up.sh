#!/usr/bin/env bash
# The local authoritative DNS server (Knot DNS, Debian's `knot`) for the agents' zone, run by
# services-up.sh: 127.0.0.1 only, a non-standard port, config, zone file, journal and control
# socket under <state>/dns. The orchestrator writes records through the control socket (knotc);
# nothing else can (the socket's directory is root-only and no DNS UPDATE is accepted).
# Idempotent: a running server with the same configuration is left alone; a changed one reloads.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${CORTEX_STATE_DIR:-$ROOT/.local}
case "$STATE" in /*) ;; *) STATE=$ROOT/$STATE ;; esac
case "$STATE" in *[[:space:],:\'\"]*) echo "[dns] the state directory ($STATE) must not contain spaces, quotes, ',' or ':'" >&2; exit 1 ;; esac
DNS_PORT=${CORTEX_DNS_PORT:-53530}
ZONE=${DNS_ZONE:-agents.localhost.test}
log() { printf '[dns] %s\n' "$*" >&2; }

# Same rules as orchestrator/config.ts (DNS_ZONE) and the port: both end up in the config file.
[[ "$DNS_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && [ "$DNS_PORT" -le 65535 ] || { log "CORTEX_DNS_PORT must be a port number"; exit 1; }
[[ ${#ZONE} -le 253 && "$ZONE" =~ ^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$ ]] ||
  { log "DNS_ZONE must be a DNS zone like agents.example.com"; exit 1; }
command -v knotd >/dev/null && command -v knotc >/dev/null || { log "knotd/knotc missing: run scripts/deps.sh"; exit 1; }

DIR=$STATE/dns
SOCK=$DIR/knot.sock
mkdir -p "$DIR/zones" "$DIR/db"
chmod 0700 "$DIR" # the control socket accepts zone edits from whoever reaches it

# One worker of each kind: a handful of records, and the machine's cores belong to the hosts.
conf=$(
  cat <<CONF
# Written by scripts/dns-up.sh; edits are overwritten.
server:
    rundir: "$DIR"
    pidfile: "$DIR/knot.pid"
    listen: 127.0.0.1@$DNS_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "$SOCK"
database:
    storage: "$DIR/db"
log:
  - target: "$DIR/knot.log"
    any: info
template:
  - id: default
    storage: "$DIR/zones"
    file: "%s.zone"
    semantic-checks: on
zone:
  - domain: $ZONE
CONF
)
changed=0
if [ "$(cat "$DIR/knot.conf" 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" > "$DIR/knot.conf.tmp" && mv "$DIR/knot.conf.tmp" "$DIR/knot.conf"
  changed=1
fi
# The zone starts with its SOA and NS only; the name server is named outside the zone (localhost.)
# so that no agent label is reserved. Knot keeps the file in step with every committed change.
if [ ! -s "$DIR/zones/$ZONE.zone" ]; then
  cat > "$DIR/zones/$ZONE.zone" <<ZONEFILE
\$ORIGIN $ZONE.
\$TTL 30
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 30
@ NS localhost.
ZONEFILE
fi

# A changed configuration (port, zone) restarts the server: a reload does not move its sockets.
if [ $changed = 1 ] && knotc -s "$SOCK" -t 5 status >/dev/null 2>&1; then
  log "configuration changed: restarting Knot DNS"
  pid=$(cat "$DIR/knot.pid" 2>/dev/null || true)
  knotc -s "$SOCK" -t 5 stop >/dev/null
  for _ in $(seq 1 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
if ! knotc -s "$SOCK" -t 5 status >/dev/null 2>&1; then
  log "starting Knot DNS on 127.0.0.1:$DNS_PORT for $ZONE"
  # A server that died leaves its pid file (knotd then refuses to start) and socket behind.
  pid=$(cat "$DIR/knot.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = knotd ] &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    log "knotd (pid $pid) runs but its control socket does not answer; stop it and retry"; exit 1
  fi
  rm -f "$DIR/knot.pid" "$SOCK"
  knotd -c "$DIR/knot.conf" -d </dev/null >/dev/null 2>>"$DIR/knot.log"
  for _ in $(seq 1 50); do knotc -s "$SOCK" -t 2 status >/dev/null 2>&1 && break; sleep 0.1; done
  knotc -s "$SOCK" -t 2 status >/dev/null 2>&1 || { log "Knot DNS did not start; see $DIR/knot.log"; exit 1; }
fi
# The zone is served (not merely configured): a failed load would leave NXDOMAIN/REFUSED for every agent.
for _ in $(seq 1 50); do
  knotc -s "$SOCK" zone-read "$ZONE" @ SOA >/dev/null 2>&1 && break
  sleep 0.1
done
knotc -s "$SOCK" zone-read "$ZONE" @ SOA >/dev/null 2>&1 || { log "zone $ZONE did not load; see $DIR/knot.log"; exit 1; }
echo "DNS         127.0.0.1:$DNS_PORT  zone $ZONE   (data: $DIR)"
