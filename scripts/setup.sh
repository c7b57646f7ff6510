#!/usr/bin/env bash
# Install everything katran needs on a fresh Debian machine (idempotent), then
# install the package editable, which compiles the BPF objects and the native helper.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libbpf-dev bpftool iproute2 tcpdump iputils-ping ethtool gcc libc6-dev linux-libc-dev make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the thrift compiler is optional (only to regenerate/check the committed thrift code)
if ! command -v thrift >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends thrift-compiler >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$PY" -m pip install -q -e '.[dev]'
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
