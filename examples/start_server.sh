#!/bin/sh
# Start katran-server-grpc like Katran's example: standalone on an interface, the
# default gateway's MAC discovered from the routing and neighbour tables.
#
#   examples/start_server.sh [interface] [extra katran-server-grpc flags...]
#   e.g. examples/start_server.sh eth0 -forwarding_cores=0 -lru_size=10000
#   shared mode: examples/start_server.sh eth0 -map_path=/sys/fs/bpf/jmp_eth0 -prog_pos=2
#
# Environment: KATRAN_SERVER (default "katran-server-grpc"), GATEWAY_MAC (skip discovery).
set -eu
INTF="${1:-eth0}"
[ $# -gt 0 ] && shift
SERVER="${KATRAN_SERVER:-katran-server-grpc}"

if [ -z "${GATEWAY_MAC:-}" ]; then
    GW="$(ip route show default | awk '/^default/ {print $3; exit}')"
    if [ -z "$GW" ]; then
        echo "start_server.sh: no default route; set GATEWAY_MAC" >&2
        exit 1
    fi
    ping -c 1 -W 1 "$GW" >/dev/null 2>&1 || true   # make sure the neighbour entry exists
    GATEWAY_MAC="$(ip neigh show "$GW" dev "$INTF" | awk '{for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1)}')"
    if [ -z "$GATEWAY_MAC" ]; then
        echo "start_server.sh: cannot resolve the MAC of gateway $GW on $INTF; set GATEWAY_MAC" >&2
        exit 1
    fi
fi
echo "default gateway MAC: $GATEWAY_MAC" >&2
exec $SERVER -intf="$INTF" -default_mac="$GATEWAY_MAC" "$@"
