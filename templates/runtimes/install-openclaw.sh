#!/bin/sh
# Install Node and the OpenClaw gateway on an agent server at first boot (the `openclaw` runtime;
# production only: it needs the internet). Idempotent: a second run changes nothing.
#
# Rendered by templates/runtime-profiles.ts from templates/runtimes/openclaw-pins.json: the versions
# and their checksums are held in the orchestrator's repository, never fetched beside the download.
# Every download is checked BEFORE it is used (a mismatch removes it and exits 1), and npm runs with
# --ignore-scripts, so no package's lifecycle script ever runs as root.
# DESTDIR (default empty) prefixes every path written, as in `make install`.
set -eu
NODE_VERSION='{{nodeVersion}}'
NODE_SHA256_X64='{{nodeSha256X64}}'
NODE_SHA256_ARM64='{{nodeSha256Arm64}}'
OPENCLAW_VERSION='{{openclawVersion}}'
OPENCLAW_SHA512='{{openclawSha512}}'
DESTDIR=${DESTDIR:-}
NODE_PREFIX="$DESTDIR/opt/node"
PREFIX="$DESTDIR/usr/local"

# verify FILE sha256|sha512 EXPECTED_HEX: the file is used only if its digest is the pinned one.
verify() {
  actual=$("${2}sum" -- "$1" | cut -d ' ' -f 1)
  if [ "$actual" != "$3" ]; then
    rm -f -- "$1"
    echo "install-openclaw: $(basename -- "$1"): $2 mismatch (pinned $3, downloaded $actual); not used" >&2
    exit 1
  fi
}

fetch() {
  curl -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$2" "$1"
}

case "$(uname -m)" in
  x86_64) ARCH=x64 NODE_SHA256=$NODE_SHA256_X64 ;;
  aarch64) ARCH=arm64 NODE_SHA256=$NODE_SHA256_ARM64 ;;
  *) echo "install-openclaw: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$("$NODE_PREFIX/bin/node" --version 2>/dev/null || true)" != "v$NODE_VERSION" ]; then
  tarball="node-v$NODE_VERSION-linux-$ARCH.tar.xz"
  fetch "https://nodejs.org/dist/v$NODE_VERSION/$tarball" "$work/$tarball"
  verify "$work/$tarball" sha256 "$NODE_SHA256"
  rm -rf "$NODE_PREFIX.new" && mkdir -p "$NODE_PREFIX.new"
  tar -xJf "$work/$tarball" -C "$NODE_PREFIX.new" --strip-components=1 --no-same-owner
  rm -rf "$NODE_PREFIX" && mv "$NODE_PREFIX.new" "$NODE_PREFIX"
fi
mkdir -p "$PREFIX/bin"
for b in node npm npx; do ln -sf "/opt/node/bin/$b" "$PREFIX/bin/$b"; done

if [ "$(PATH="$NODE_PREFIX/bin:$PATH" "$PREFIX/bin/openclaw" --version 2>/dev/null || true)" != "$OPENCLAW_VERSION" ]; then
  package="openclaw-$OPENCLAW_VERSION.tgz"
  fetch "https://registry.npmjs.org/openclaw/-/$package" "$work/$package"
  verify "$work/$package" sha512 "$OPENCLAW_SHA512"
  # The verified tarball itself, never the registry's current answer for the name. Its dependencies
  # are resolved by npm and checked against the registry's integrity values.
  PATH="$NODE_PREFIX/bin:$PATH" "$NODE_PREFIX/bin/npm" install --global --ignore-scripts --no-fund \
    --no-audit --prefix "$PREFIX" "$work/$package"
fi
