#!/bin/sh
# Keep every non-root process (the agent above all) away from the cloud metadata service: on
# Hetzner it serves this server's user data to anything inside the VM. Root (cloud-init) keeps
# access. Run by cortex-metadata-block.service at every boot; idempotent.
# Usage: cortex-block-metadata [--required]
#   --required (production): exit 1 when the block cannot be put in place (no tool, or the tool
#   failed), so the unit fails and the agent unit, which Requires= it, does not start.
#   Without it (local hosts, which have no metadata service): warn and exit 0.
set -u
ADDR=169.254.169.254
REQUIRED=0
[ "${1:-}" = --required ] && REQUIRED=1

give_up() {
  echo "cortex-block-metadata: $1; metadata service NOT blocked" >&2
  [ "$REQUIRED" = 1 ] && exit 1
  exit 0
}

if command -v nft >/dev/null 2>&1; then
  # Declaring then deleting the table makes the load a replacement, however often it runs.
  nft -f - <<NFT || give_up "nft could not load the rule"
table inet cortex_metadata
delete table inet cortex_metadata
table inet cortex_metadata {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr $ADDR meta skuid != 0 counter reject
  }
}
NFT
elif command -v iptables >/dev/null 2>&1; then
  iptables -C OUTPUT -d "$ADDR" -m owner ! --uid-owner 0 -j REJECT 2>/dev/null ||
    iptables -I OUTPUT -d "$ADDR" -m owner ! --uid-owner 0 -j REJECT ||
    give_up "iptables could not insert the rule"
else
  give_up "neither nft nor iptables is installed"
fi
exit 0
