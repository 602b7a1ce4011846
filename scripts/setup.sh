#!/usr/bin/env bash
# Installs every Debian 12 package ocsp-agent needs to build, test, run the demo and run the benchmarks.
#   scripts/setup.sh [--always]
# Without --always, a machine that already has every package is left alone (no apt call at all). With --always
# (or OA_SETUP_ALWAYS=1), `apt-get update` and `apt-get install` run for the whole list every time: CI does that,
# so the install path is exercised on every run and not only on a fresh machine.
# apt itself reports a package it cannot find; nothing here second-guesses it.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config                         # toolchain
  libuv1-dev libjansson-dev libssl-dev node-llhttp         # the daemon's libraries (llhttp ships as C sources)
  libcmocka-dev libhiredis-dev                             # unit tests; the Redis protocol of cluster mode
  redis-server redis-tools openssl curl jq procps iproute2 python3  # integration tests and the demo
  etcd-server etcd-client                                  # cluster mode on etcd: the store and etcdctl
  haproxy python3-redis python3-openssl python3-requests   # staple delivery: the TLS proxy and a real client
  nginx wrk testssl.sh                                     # the benchmarks, the nginx hook example, TLS checks
  clang valgrind                                           # fuzzing and leak checks
)

always=${OA_SETUP_ALWAYS:-0}
case "${1:-}" in
  --always) always=1 ;;
  "") ;;
  *) echo "setup: unknown option $1 (usage: scripts/setup.sh [--always])" >&2; exit 2 ;;
esac

installed() {
  # dpkg-query's exit status says whether it knows the package; its output, whether it is installed.
  # No pipe: a reader that stops early cannot turn a success into SIGPIPE under pipefail.
  local status
  status=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
  [ "$status" = installed ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ] && [ "$always" != 1 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "setup: missing packages (${missing[*]:-none}) and not root, with no sudo to install them" >&2
    exit 1
  fi
fi

# Debian's nginx, haproxy and etcd-server packages start system-wide servers (nginx on port 80, etcd on 2379). The
# suites run private ones on ports of their own, so a service that this script brought in is stopped and disabled
# again. Each entry is package:service.
services=()
for entry in nginx:nginx haproxy:haproxy etcd-server:etcd; do
  installed "${entry%%:*}" || services+=("${entry#*:}")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
else
  echo "setup: all packages present; updating and reinstalling the list anyway (--always)"
fi
apt_env=(env DEBIAN_FRONTEND=noninteractive)
"${SUDO[@]}" "${apt_env[@]}" apt-get update -q
"${SUDO[@]}" "${apt_env[@]}" apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"

for svc in "${services[@]}"; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  pidfile=/run/$svc.pid
  if [ -f "$pidfile" ]; then
    "${SUDO[@]}" kill "$(cat "$pidfile")" >/dev/null 2>&1 || true
  fi
done

for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || { echo "setup: $pkg is still not installed after apt-get install" >&2; exit 1; }
done
echo "setup: done (${#PACKAGES[@]} packages)"
