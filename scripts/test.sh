#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, as root (BPF, netns).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "$(bash scripts/python.sh)" -m pytest -q "$@"
