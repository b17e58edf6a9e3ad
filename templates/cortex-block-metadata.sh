#!/bin/sh
# Keep every non-root process (the agent above all) away from the cloud metadata service: on
# Hetzner it serves this server's user data to anything inside the VM. Root (cloud-init) keeps
# access. Run by cortex-metadata-block.service at every boot; idempotent.
# Usage: cortex-block-metadata [--required]   (--required: fail when no firewall tool exists)
set -eu
ADDR=169.254.169.254
if command -v nft >/dev/null 2>&1; then
  # Declaring then deleting the table makes the load a replacement, however often it runs.
  nft -f - <<NFT
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
    iptables -I OUTPUT -d "$ADDR" -m owner ! --uid-owner 0 -j REJECT
else
  echo "cortex-block-metadata: neither nft nor iptables is installed; metadata service NOT blocked" >&2
  [ "${1:-}" = --required ] && exit 1
fi
exit 0
