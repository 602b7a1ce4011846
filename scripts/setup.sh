#!/usr/bin/env bash
# Installs every Debian 12 package ocsp-agent needs to build, test, run the demo and run the benchmark.
# Repeat runs are fast: when every package is already installed, apt is not touched at all.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config                         # toolchain
  libuv1-dev libjansson-dev libssl-dev node-llhttp         # the daemon's libraries (llhttp ships as C sources)
  libcmocka-dev libhiredis-dev                             # unit tests; the cluster store client
  redis-server redis-tools openssl curl jq procps iproute2 python3  # integration tests and the demo
  nginx wrk                                                # the API benchmark
  clang valgrind                                           # fuzzing and leak checks
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "setup: missing packages (${missing[*]}) and not root, with no sudo to install them" >&2
    exit 1
  fi
fi

nginx_was_installed=0
dpkg-query -W -f='${db:Status-Status}' nginx 2>/dev/null | grep -qx installed && nginx_was_installed=1

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
# A name apt does not know would fail the install with a long message; say which one it is.
for pkg in "${missing[@]}"; do
  if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
    echo "setup: no installable package named $pkg (is this Debian 12?)" >&2
    exit 1
  fi
done
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"

# Debian's nginx package starts a system-wide server on port 80. The benchmark runs its own private nginx, so
# the service is stopped and disabled again; without systemd (containers) there is nothing to stop.
if [ "$nginx_was_installed" -eq 0 ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
  if [ -f /run/nginx.pid ]; then
    "${SUDO[@]}" nginx -s quit >/dev/null 2>&1 || true
  fi
fi
echo "setup: done"
