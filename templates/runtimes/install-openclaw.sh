#!/bin/sh
# Install Node 24 and the OpenClaw gateway on an agent server at first boot (the `openclaw`
# runtime; production only: it needs the internet). Idempotent: a second run changes nothing.
# Node comes from nodejs.org's latest v24 release and is checked against that release's
# SHASUMS256.txt; OpenClaw is pinned by version. Usage: install-openclaw.sh OPENCLAW_VERSION
set -eu
OPENCLAW_VERSION=${1:?usage: install-openclaw.sh OPENCLAW_VERSION}
NODE_MAJOR=24
PREFIX=/opt/node
case "$(uname -m)" in
  x86_64) ARCH=x64 ;;
  aarch64) ARCH=arm64 ;;
  *) echo "install-openclaw: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

if ! "$PREFIX/bin/node" --version 2>/dev/null | grep -q "^v$NODE_MAJOR\."; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  base="https://nodejs.org/dist/latest-v$NODE_MAJOR.x"
  curl -fsSL --proto '=https' --retry 5 -o "$work/SHASUMS256.txt" "$base/SHASUMS256.txt"
  tarball=$(awk -v a="linux-$ARCH.tar.xz" '$2 ~ "^node-v[0-9.]+-" a "$" { print $2; exit }' "$work/SHASUMS256.txt")
  [ -n "$tarball" ] || { echo "install-openclaw: no Node $NODE_MAJOR tarball for $ARCH" >&2; exit 1; }
  curl -fsSL --proto '=https' --retry 5 -o "$work/$tarball" "$base/$tarball"
  (cd "$work" && grep " $tarball\$" SHASUMS256.txt | sha256sum -c -)
  rm -rf "$PREFIX.new" && mkdir -p "$PREFIX.new"
  tar -xJf "$work/$tarball" -C "$PREFIX.new" --strip-components=1 --no-same-owner
  rm -rf "$PREFIX" && mv "$PREFIX.new" "$PREFIX"
fi
for b in node npm npx; do ln -sf "$PREFIX/bin/$b" "/usr/local/bin/$b"; done

if [ "$(openclaw --version 2>/dev/null || true)" != "$OPENCLAW_VERSION" ]; then
  npm install --global --no-fund --no-audit --prefix /usr/local "openclaw@$OPENCLAW_VERSION"
fi
