#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the lab demo: a VIP served through our XDP balancer
# in network namespaces on this machine.  Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m katran.lab "$@"
