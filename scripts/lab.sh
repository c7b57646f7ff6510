#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the lab demo: a VIP served through our XDP balancer
# in network namespaces on this machine.  Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if command -v katran-lab >/dev/null 2>&1 || "${PYTHON:-python3}" -c 'import katran.lab' 2>/dev/null; then
  exec "${PYTHON:-python3}" -m katran.lab "$@"
fi
echo "lab not yet built (see the lab issue); the test suite is: sudo bash scripts/test.sh"
