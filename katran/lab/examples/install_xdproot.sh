#!/bin/sh
# Install katran's root XDP program (shared mode) on an interface, like Katran's
# install_xdproot.sh: mounts bpffs when needed, attaches xdp_root and pins its
# program array so that the balancer (-map_path ... -prog_pos 2) and other XDP
# programs (katran/lab/examples/firewall.py) can take slots in it.
#
#   katran/lab/examples/install_xdproot.sh [interface] [map path] [slots]
#   defaults: eth0  /sys/fs/bpf/jmp_<interface>  3
#
# Remove it with: katran-xdp-root uninstall --intf <interface> --map-path <map path>
set -eu
INTF="${1:-eth0}"
MAP_PATH="${2:-/sys/fs/bpf/jmp_${INTF}}"
SLOTS="${3:-3}"
PYTHON="${PYTHON:-python3}"

if ! mount | grep -q "on /sys/fs/bpf type bpf"; then
    mount -t bpf bpf /sys/fs/bpf
fi
"$PYTHON" -m katran.cli_root install --intf "$INTF" --map-path "$MAP_PATH" --slots "$SLOTS"
"$PYTHON" -m katran.cli_root status --intf "$INTF" --map-path "$MAP_PATH"
