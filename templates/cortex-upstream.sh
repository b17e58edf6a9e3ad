#!/bin/sh
# Written by the cortex orchestrator. Routes the agent's service port on loopback (Caddy's upstream,
# 127.0.0.1:<service port>, which nothing listens on) to the blue/green slot named by the root-only
# record /etc/cortex/active-slot, with an nft redirect. One nft transaction replaces the whole
# table: connections already open keep the slot they were routed to (conntrack), new ones go to the
# active slot. So switching slots never touches Caddy's config (a Caddy 2.6 config reload starts
# the new TLS app with an empty certificate cache, and handshakes in that moment fail).
set -eu
service_port="${1:?usage: cortex-upstream <service port>}"
case "$service_port" in *[!0-9]* | '') echo "cortex-upstream: bad service port" >&2; exit 2 ;; esac
slot=blue
if [ -e /etc/cortex/active-slot ]; then
	read -r slot </etc/cortex/active-slot || true
fi
case "$slot" in
blue | green) ;;
*)
	echo "cortex-upstream: the active-slot record names no slot; using blue" >&2
	slot=blue
	;;
esac
port=$(sed -n 's/^CORTEX_AGENT_PORT=\([0-9]\{1,5\}\)$/\1/p' "/usr/local/lib/cortex/slot-$slot.env")
if [ -z "$port" ]; then
	echo "cortex-upstream: no port for slot $slot" >&2
	exit 1
fi
nft -f - <<NFT
table ip cortex_upstream
delete table ip cortex_upstream
table ip cortex_upstream {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr 127.0.0.1 tcp dport $service_port redirect to :$port comment "slot $slot"
	}
}
NFT
echo "cortex-upstream: 127.0.0.1:$service_port -> slot $slot (port $port)"
