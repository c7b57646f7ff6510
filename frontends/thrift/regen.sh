#!/bin/sh
# Regenerate the Python code of katran.thrift with the Apache Thrift compiler
# (Debian: apt-get install thrift-compiler).
#   regen.sh            rewrite katran_thrift/gen/ in place
#   regen.sh OUTDIR     write the generated package to OUTDIR/ instead (tests)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/katran_thrift/gen"}
command -v thrift >/dev/null 2>&1 || { echo "regen.sh: the thrift compiler is not installed" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
thrift --gen py -out "$tmp" "$here/katran_thrift/katran.thrift"
# keep only the modules of the leaf package (the compiler also writes empty
# __init__.py files for the parent packages and a KatranService-remote script)
mkdir -p "$out"
rm -f "$out"/*.py
cp "$tmp"/katran_thrift/gen/*.py "$out"/
