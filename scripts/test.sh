#!/usr/bin/env bash
# The project's whole check, as CI runs it (.ci/run):
#   1. install what is missing (scripts/setup.sh),
#   2. build with -Werror into build/ and run every unit and integration test,
#   3. build with ASan+UBSan into build-asan/ and run them all again.
# Exits non-zero when any build or test fails; the last line is a one-line summary.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
# Most suites wait on timers and sockets rather than the CPU: three at a time keep two cores busy in the plain
# build. The sanitizer build is CPU-bound, so it runs two at a time.
jobs_plain=3
jobs_sanitized=2
start=$SECONDS
results=()
failed=0

# Nothing here reads standard input; CI=true (set by CI) only makes that explicit for the tools we call.
if [ "${CI:-}" = true ]; then
  exec </dev/null
fi

step() {
  local name=$1; shift
  echo "==> $name"
  if "$@"; then
    results+=("$name: ok")
  else
    results+=("$name: FAILED")
    failed=1
    return 1
  fi
}

# Under CI the whole package list goes through apt every time, so the install path cannot rot unseen.
setup_args=()
[ "${CI:-}" = true ] && setup_args=(--always)
bash scripts/setup.sh "${setup_args[@]}" || { echo "test.sh: setup failed" >&2; exit 1; }

if step "build (Werror)" bash scripts/build.sh --dir build; then
  step "ctest build/" ctest --test-dir build --output-on-failure -j"$jobs_plain" || true
fi

# Leaks are errors; a sanitizer report stops the process so the test fails at the faulty line.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if step "build (ASan+UBSan)" bash scripts/build.sh --sanitize --dir build-asan; then
  step "ctest build-asan/" ctest --test-dir build-asan --output-on-failure -j"$jobs_sanitized" || true
fi

# libFuzzer targets, briefly (clang); OA_FUZZ_SECONDS=0 skips them.
fuzz_seconds=${OA_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" != 0 ]; then
  step "fuzz (${fuzz_seconds}s per target)" bash scripts/fuzz.sh --seconds "$fuzz_seconds" || true
fi

echo
for r in "${results[@]}"; do echo "  $r"; done
elapsed=$((SECONDS - start))
if [ "$failed" -ne 0 ]; then
  echo "test.sh: FAILED after ${elapsed}s"
  exit 1
fi
echo "test.sh: all builds and tests passed in ${elapsed}s"
