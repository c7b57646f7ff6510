#!/usr/bin/env bash
# Print the Python interpreter the project runs with: the project's .venv when
# scripts/setup.sh made one, else $PYTHON (default python3).
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  echo "$PWD/.venv/bin/python"
else
  command -v "${PYTHON:-python3}"
fi
