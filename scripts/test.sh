#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite.  Needs root (BPF, netns).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
