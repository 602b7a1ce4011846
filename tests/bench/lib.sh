# shellcheck shell=bash
# The set-up every benchmark shares, sourced first by tests/bench/bench_*.sh (which run under set -euo pipefail):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_usage LAST              prints lines 2..LAST of the script's header comment (its usage text)
#   die MESSAGE                   "<script>: MESSAGE" on stderr, exit 1
#   bench_bad_option OPTION       "<script>: unknown option OPTION" and the usage on stderr, exit 2
#   bench_positive VALUE...       exits 2 unless every VALUE is a positive integer
#   bench_need TOOL...            exits 1 naming the first TOOL that is not installed
#   bench_build                   unless build=0: the Release build without sanitizers or tests into build-bench/
#                                 (shared by every benchmark); sets bin, exits when it is missing
#   bench_tmp PREFIX              a private temporary directory $tmp; at exit every pid in pids is stopped (TERM,
#                                 then KILL after 5 s) and $tmp removed (kept with OA_KEEP_TMP=1)
#   listening PORT / free_port / wait_port PORT PID
#   bench_pin                     with two CPUs or more: server_cpu=(taskset -c 0) and client_cpu=(taskset -c 1)
#
# Variables: root (the repository), bench (the script's name), build (1 unless --no-build set it to 0), bin, tmp,
# pids, server_cpu, client_cpu.

# shellcheck disable=SC2034 # build, bin, server_cpu and client_cpu are read by the scripts that source this
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_script=${BASH_SOURCE[-1]}
bench=$(basename "$bench_script")
build=1
bin=
tmp=
pids=()
server_cpu=()
client_cpu=()

bench_usage() { sed -n "2,${1}p" "$bench_script" | sed 's/^# \{0,1\}//'; }
die() { echo "$bench: $*" >&2; exit 1; }
bench_bad_option() { echo "$bench: unknown option $1" >&2; usage >&2; exit 2; }

bench_positive() {
  local v
  for v in "$@"; do
    if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then echo "$bench: expected a positive integer, got '$v'" >&2; exit 2; fi
  done
}

bench_need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh)"
  done
}

bench_build() {
  bin=$root/build-bench/ocsp-agent
  if [ "$build" = 1 ]; then
    echo "building $root/build-bench (Release, no sanitizers)"
    cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DOA_SANITIZE=OFF -DOA_TESTS=OFF >/dev/null
    cmake --build "$root/build-bench" -j2 --target ocsp-agent >/dev/null
  fi
  [ -x "$bin" ] || die "$bin is missing: run without --no-build"
}

# shellcheck disable=SC2317 # called by the EXIT trap
bench_cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$tmp" ]; then
    if [ "${OA_KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
  fi
}

bench_tmp() {
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Readiness and free ports are read from ss rather than probed with a connect: `openssl ocsp` serves one
# connection at a time and stalls on a silent one.
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }

# A loopback port no socket uses, outside the kernel's ephemeral range.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then echo "$p"; return 0; fi
  done
  return 1
}

# wait_port PORT PID: 0 once PORT listens (within 10 s); 1 when PID died first or the time ran out.
wait_port() {
  for _ in $(seq 1 200); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

bench_pin() {
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    server_cpu=(taskset -c 0)
    client_cpu=(taskset -c 1)
  fi
}
