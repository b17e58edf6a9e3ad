#!/usr/bin/env bash
# The recipe of the local hosts' base image: Debian bookworm with systemd, sshd, cloud-init and
# Caddy, prepared for cloning (no SSH host keys, empty machine-id, networkd on, cloud-init reading
# only the NoCloud seed). Everything under scripts/image/ is hashed into the image's identity, so
# editing this file or anything in rootfs/ makes `npm run image:build` build a new image.
#
# Usage: build.sh ROOTFS MIRROR [SECURITY_MIRROR]   (run by orchestrator/infra/local-image.ts,
# which picks the mirrors from this machine's apt sources and renames ROOTFS into place on success)
set -euo pipefail
ROOTFS=$1
MIRROR=$2
SECURITY_MIRROR=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
# debootstrap's own set: what a booting container with sshd needs.
BASE_PKGS=systemd,systemd-sysv,dbus,openssh-server,iproute2,ca-certificates
# Installed afterwards with apt (cloud-init has too many dependencies for debootstrap to resolve
# quickly). python3 runs the `echo` agent runtime (templates/runtimes/echo-agent.py); nftables is what
# templates/cortex-block-metadata.sh uses, as on a cloud server (Debian leaves nftables.service off).
EXTRA_PKGS=(cloud-init caddy curl python3 nftables)

log() { printf '[image] %s\n' "$*" >&2; }

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}"; done
  rm -f "$ROOTFS/usr/sbin/policy-rc.d"
}
trap cleanup EXIT

[ -d "$ROOTFS" ] && [ -z "$(ls -A "$ROOTFS")" ] || { log "$ROOTFS must be an empty directory"; exit 2; }

log "debootstrap $SUITE (minbase) from $MIRROR"
debootstrap --variant=minbase --include="$BASE_PKGS" "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Package scripts must not start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

mount -t proc proc "$ROOTFS/proc" && mounts+=("$ROOTFS/proc")
mount --bind /sys "$ROOTFS/sys" && mounts+=("$ROOTFS/sys")
mount --bind /dev "$ROOTFS/dev" && mounts+=("$ROOTFS/dev")
mount --bind /dev/pts "$ROOTFS/dev/pts" && mounts+=("$ROOTFS/dev/pts")
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

# The same mirrors as this machine's apt sources (deb822), so a host could install from them where
# it has a route out (local hosts have none: everything they need is in the image).
rm -f "$ROOTFS/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$SUITE" "$SUITE"
  if [ -n "$SECURITY_MIRROR" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$SECURITY_MIRROR" "$SUITE"
  fi
} >"$ROOTFS/etc/apt/sources.list.d/debian.sources"

in_root() { LANG=C.UTF-8 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" "$@"; }
log "apt-get install ${EXTRA_PKGS[*]} (and pending updates)"
in_root apt-get update -q >&2
in_root apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade >&2
in_root apt-get install -y -q --no-install-recommends "${EXTRA_PKGS[@]}" >&2

log "preparing for cloning"
# Every clone gets its own host key from cloud-init (the orchestrator's pinned one) and its own
# machine id at first boot; identical keys or ids across hosts would defeat pinning and journald.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
: >"$ROOTFS/etc/machine-id"
ln -sf /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"
rm -f "$ROOTFS/etc/hostname"
cp -a "$HERE/rootfs/." "$ROOTFS/"
in_root systemctl enable systemd-networkd.service >&2
# Caddy as its package leaves it on Ubuntu: enabled, and started at boot with the stock Caddyfile
# (admin API on TCP 127.0.0.1:2019, a `:80` file server). cloud-init writes the agent's Caddyfile
# later (deferred, in cloud-final, which runs After=multi-user.target), so, as on a Hetzner server,
# only the provisioning `start` step's restart applies it and moves the admin API to its socket.
in_root systemctl enable caddy.service >&2
# Maintenance timers for real disks and online package updates have nothing to do in a container
# without a route out; they only wake idle hosts.
in_root systemctl disable apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer >&2

in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/apt/* \
  "$ROOTFS"/var/log/dpkg.log "$ROOTFS"/var/log/bootstrap.log "$ROOTFS"/var/lib/cloud/*
log "done: $(du -sh "$ROOTFS" | cut -f1)"
