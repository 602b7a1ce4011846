#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang into build-fuzz/ and runs each for a bounded time.
#   scripts/fuzz.sh [--seconds N] [--target NAME]...
# --seconds N    run time per target (default 60; CI uses a small N such as 30)
# --target NAME  run only NAME (fuzz_http_request, fuzz_conf_patch, fuzz_ocsp_verify); may be repeated
#
# Each target starts from a copy of tests/fuzz/corpus/<target>/ in build-fuzz/run/<target>/corpus/, so the
# committed seeds are never written to. A crash, leak, timeout or out-of-memory input is saved under
# build-fuzz/crashes/ and makes the script exit non-zero. Per target it prints the executions and the final
# coverage line; the last line is a one-line summary.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The CMake project to configure: the repository root. Overridable only to try the targets from a wrapper project.
source_dir=${OA_FUZZ_SOURCE:-$root}
build=$root/build-fuzz
seconds=60
targets=()
all_targets=(fuzz_http_request fuzz_conf_patch fuzz_ocsp_verify)

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || { usage >&2; exit 2; }; seconds=$2; shift ;;
    --seconds=*) seconds=${1#--seconds=} ;;
    --target) [ $# -ge 2 ] || { usage >&2; exit 2; }; targets+=("$2"); shift ;;
    --target=*) targets+=("${1#--target=}") ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds needs a positive whole number" >&2; exit 2; }
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
done

# Longest input per target: a few requests (the fuzz server's limits are 1 KiB of headers and 2 KiB of body),
# a PUT body, an OCSP response with a delegated responder's certificate.
max_len() {
  case $1 in
    fuzz_http_request) echo 4096 ;;
    fuzz_conf_patch) echo 1024 ;;
    fuzz_ocsp_verify) echo 4096 ;;
  esac
}

command -v clang >/dev/null || { echo "fuzz.sh: clang is not installed" >&2; exit 1; }
echo "==> build (clang, libFuzzer + ASan + UBSan) into $build"
# A cache configured from another source tree (or with another compiler) cannot be reused: start afresh.
if [ -f "$build/CMakeCache.txt" ] &&
  ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$source_dir" "$build/CMakeCache.txt"; then
  rm -rf "$build"
fi
cmake -S "$source_dir" -B "$build" -DCMAKE_C_COMPILER=clang -DOA_FUZZ=ON -DOA_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build.cmake.log" 2>&1 ||
  { cat "$build.cmake.log" >&2; echo "fuzz.sh: configure failed" >&2; exit 1; }
rm -f "$build.cmake.log"
cmake --build "$build" -j2 --target "${targets[@]}" || { echo "fuzz.sh: build failed" >&2; exit 1; }

bin_dir=$build/fuzz
crash_dir=$build/crashes
mkdir -p "$crash_dir"
# Set here, not inherited: scripts/test.sh exports abort_on_error=1 for its ctest runs, which libFuzzer does not need.
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OA_FUZZ_PKI_DIR=$root/tests/fuzz/pki

failed=0
total_execs=0
lines=()
for t in "${targets[@]}"; do
  bin=$bin_dir/$t
  [ -x "$bin" ] || { echo "fuzz.sh: $bin was not built (is tests/fuzz added by the top-level CMakeLists.txt?)" >&2; exit 1; }
  work=$build/run/$t
  rm -rf "$work"
  mkdir -p "$work/corpus"
  cp "$root/tests/fuzz/corpus/$t/"* "$work/corpus/"
  args=(-max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048
    -print_final_stats=1 -artifact_prefix="$crash_dir/$t-")
  [ -f "$root/tests/fuzz/$t.dict" ] && args+=(-dict="$root/tests/fuzz/$t.dict")
  echo "==> $t for ${seconds}s"
  # The outer timeout only guards against a fuzzer that ignores -max_total_time (a hang libFuzzer misses).
  (cd "$work" && timeout -k 10 $((seconds + 300)) "$bin" "${args[@]}" corpus) >"$work/log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
  cov=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse)' "$work/log" | tail -n 1 |
    sed -E 's/^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+//; s/[[:space:]]+lim:.*//')
  total_execs=$((total_execs + ${execs:-0}))
  if [ "$rc" -eq 0 ]; then
    line="$t: ok, ${execs:-?} execs in ${seconds}s, ${cov:-no coverage line}"
  else
    failed=$((failed + 1))
    saved=$(sed -n 's/^.*Test unit written to //p' "$work/log" | tail -n 1)
    line="$t: FAILED (exit $rc), ${execs:-?} execs, ${cov:-no coverage line}; input: ${saved:-none saved}"
    echo "--- $t: the report"
    grep -E -m 1 -A 40 'ERROR: |check failed|runtime error|==[0-9]+==' "$work/log" || tail -n 40 "$work/log"
  fi
  echo "$line"
  lines+=("$line")
done

echo
for l in "${lines[@]}"; do echo "  $l"; done
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: $failed of ${#targets[@]} targets FAILED ($total_execs execs; inputs in $crash_dir)"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ok, $total_execs execs, ${seconds}s each, no crash"
