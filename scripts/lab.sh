#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the lab demo, as root: a VIP served through our
# XDP balancer in network namespaces on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "$(bash scripts/python.sh)" -m katran.lab "$@"
