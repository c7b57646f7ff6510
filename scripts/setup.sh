#!/usr/bin/env bash
# Install everything katran needs on a fresh Debian machine (idempotent), as root
# (no sudo needed), then install the package editable, which compiles the BPF objects
# and the native helper.  The interpreter is $PYTHON (default python3); when it refuses
# system-wide installs (PEP 668, e.g. Debian's own python3) a virtual environment is
# made in .venv and used from then on (scripts/python.sh prints which one is used).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (apt-get, BPF and network namespaces need it)" >&2
  exit 1
fi

# BPF build: clang llvm libbpf-dev linux-libc-dev (kernel uapi headers only, no glibc headers);
# native helper: gcc libc6-dev; tests and lab: the rest (bird2: the BGP daemon of katran.bgp;
# util-linux: unshare, nsenter, setpriv of the netns and capability tests).
APT_PACKAGES=(clang llvm libbpf-dev linux-libc-dev gcc libc6-dev make
              bpftool iproute2 tcpdump iputils-ping ethtool thrift-compiler bird2 util-linux)
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || APT_PACKAGES+=(python3 python3-venv python3-dev)
case "$(command -v "$PY" || true)" in
  /usr/bin/*) APT_PACKAGES+=(python3-venv python3-dev) ;;   # Debian's python: venv + headers for cffi
esac
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "scripts/setup.sh: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=$(command -v "$PY")

# A system-wide install where the interpreter allows it, else (PEP 668) the project's .venv.
managed=$("$PY" -c 'import os, sysconfig; print(int(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
if [ -x .venv/bin/python ] || [ "$managed" = 1 ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "scripts/setup.sh: $PY refuses system-wide installs (PEP 668): creating .venv" >&2
    if ! "$PY" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      "$PY" -m venv .venv
    fi
  fi
  PY=$PWD/.venv/bin/python
fi

export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# a failed BPF or native build fails here, with one message naming the missing piece
"$PY" -m pip install -q -e '.[dev]'
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
