#!/usr/bin/env bash
# Debian packages the project needs: the local services, the tools the unit tests validate
# generated files with (caddy, cloud-init, systemd-analyze, python3, ssh-keygen), pg_prove, the
# local authoritative DNS server (knot, with knotc; knot-dnsutils for kdig/knsupdate), OpenSSH's
# sftp-server (the unit tests' in-process SSH server hands SFTP sessions to it), headless Chromium
# (the Bull Board test drives it with playwright-core), and what local hosts are built and run with. Installs only what is missing; idempotent.
set -euo pipefail
log() { printf '[deps] %s\n' "$*" >&2; }

PKGS=(postgresql-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl postgresql-15-plpgsql-check
  redis-server caddy cloud-init systemd systemd-container debootstrap iproute2 openssh-client python3 perl
  curl ca-certificates knot knot-dnsutils openssh-sftp-server chromium)
# Packages whose Debian units start at boot: the project runs its own instances, on 127.0.0.1 and
# non-standard ports, so the system-wide ones it pulled in are disabled (never started: see policy-rc.d).
BOOT_UNITS=(caddy.service redis-server.service postgresql.service knot.service)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { log "missing Debian packages: ${missing[*]}; run as root or install them"; exit 1; }

log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# policy-rc.d keeps package scripts from starting system-wide services on standard ports.
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
trap '[ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2

for u in "${BOOT_UNITS[@]}"; do
  systemctl disable "$u" >/dev/null 2>&1 || true
done
# cloud-init is here for `cloud-init schema`; it must never configure this machine at boot.
if printf '%s\n' "${missing[@]}" | grep -qx cloud-init; then
  mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
fi
