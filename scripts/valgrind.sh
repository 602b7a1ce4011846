#!/usr/bin/env bash
# Runs the test suites under valgrind memcheck on a plain debug build (no sanitizers) in build-valgrind/.
#   scripts/valgrind.sh [--unit] [--integration] [-R REGEX]
# --unit         only the unit test executables, each run under memcheck
# --integration  only the integration suites (ctest -R integration), with every agent they start run under
#                memcheck through OA_AGENT_WRAPPER, which tests/integration/lib.sh honours
# -R REGEX       only the tests whose ctest name matches REGEX (default: all)
#
# Memcheck reports go to build-valgrind/valgrind/*.log, one per process. The script fails when a test fails or
# when any report shows an error or a definite or indirect leak; the last line is a one-line summary.
# Unit tests that hash passwords and the authentication suites are slow under memcheck (each PBKDF2 hash takes
# tens of seconds), so the timeouts below are generous.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build-valgrind
logs=$build/valgrind
run_unit=1
run_integration=1
regex=

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --unit) run_unit=1; run_integration=0 ;;
    --integration) run_unit=0; run_integration=1 ;;
    -R) [ $# -ge 2 ] || { usage >&2; exit 2; }; regex=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "valgrind.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }
command -v jq >/dev/null || { echo "valgrind.sh: jq is not installed" >&2; exit 1; }

# Unit tests get this long each; a suite gets the whole ctest TIMEOUT of its registration.
unit_timeout=${OA_VALGRIND_UNIT_TIMEOUT:-900}
supp=$build/valgrind.supp
# Children forked by a test (they run another program at once) stay silent, so each report is one process.
vg=(valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --track-fds=no
  --num-callers=30 --child-silent-after-fork=yes --suppressions="$supp")

echo "==> build (Debug, no sanitizer) into $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DOA_SANITIZE=OFF -DOA_WERROR=ON -DOA_TESTS=ON \
  >/dev/null || { echo "valgrind.sh: configure failed" >&2; exit 1; }
cmake --build "$build" -j2 >"$build/build.log" 2>&1 ||
  { tail -n 30 "$build/build.log" >&2; echo "valgrind.sh: build failed" >&2; exit 1; }
rm -rf "$logs"
mkdir -p "$logs"

# One known false positive. OpenSSL keeps an error-queue state per thread, freed by a thread-exit handler that
# its own at-exit cleanup removes first; libuv's thread-pool workers (the password KDF runs there) are still alive
# at that point, so each worker's state (about 900 bytes, at most one per worker) shows as definitely lost.
# Only allocations made on a thread other than the main one, under an ERR_* call, are matched.
cat >"$supp" <<'SUPP'
{
   openssl-error-state-of-a-libuv-worker-thread
   Memcheck:Leak
   match-leak-kinds: definite
   fun:malloc
   fun:CRYPTO_zalloc
   obj:*/libcrypto.so*
   fun:ERR_*
   ...
   fun:start_thread
}
SUPP

results=()
failed=0

# ---- unit tests: each executable under memcheck, with the environment ctest would give it
if [ "$run_unit" = 1 ]; then
  mapfile -t units < <(ctest --test-dir "$build" --show-only=json-v1 | jq -r '
    .tests[] | select(.command != null) | select(.name | startswith("integration/") | not)
    | [.name, .command[0], ([.properties[]? | select(.name == "ENVIRONMENT") | .value[]] | join(" "))] | @tsv')
  for u in "${units[@]}"; do
    IFS=$'\t' read -r name cmd envs <<<"$u"
    [ -z "$regex" ] || [[ $name =~ $regex ]] || continue
    safe=${name//\//_}
    echo "==> unit $name under memcheck"
    start=$SECONDS
    # shellcheck disable=SC2086 # envs is a list of NAME=value words without spaces
    env $envs timeout -k 10 "$unit_timeout" "${vg[@]}" --log-file="$logs/unit-$safe.%p.log" "$cmd" \
      >"$logs/unit-$safe.out" 2>&1
    rc=$?
    took=$((SECONDS - start))
    case $rc in
      0) results+=("unit $name: ok (${took}s)") ;;
      99) results+=("unit $name: MEMCHECK ERRORS (${took}s)"); failed=1 ;;
      124|137) results+=("unit $name: TIMED OUT after ${unit_timeout}s"); failed=1 ;;
      *) results+=("unit $name: FAILED, exit $rc (${took}s); output in $logs/unit-$safe.out"); failed=1 ;;
    esac
    echo "${results[-1]}"
  done
fi

# ---- integration suites: the harness starts the agent under memcheck
if [ "$run_integration" = 1 ]; then
  if ! grep -q OA_AGENT_WRAPPER "$root/tests/integration/lib.sh"; then
    echo "valgrind.sh: tests/integration/lib.sh does not honour OA_AGENT_WRAPPER: the agent would run" \
      "without memcheck" >&2
    results+=("integration: NOT RUN (lib.sh lacks OA_AGENT_WRAPPER)")
    failed=1
  else
    echo "==> integration suites, every agent under memcheck"
    export OA_AGENT_WRAPPER="${vg[*]} --log-file=$logs/agent.%p.log"
    # Start-up, shutdown and first authentications are many times slower under memcheck.
    # Users hashed at a low cost: the agent's verification is the same code, without a minute of KDF under memcheck.
    export OA_TEST_KDF_ITERATIONS=${OA_TEST_KDF_ITERATIONS:-1000}
    export OA_START_TIMEOUT=${OA_START_TIMEOUT:-120}
    export OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-120}
    export OA_CURL_TIMEOUT=${OA_CURL_TIMEOUT:-180}
    ctest --test-dir "$build" -R "integration/${regex:-.}" --output-on-failure >"$logs/integration.out" 2>&1
    rc=$?
    grep -E '^ *[0-9]+/[0-9]+ Test ' "$logs/integration.out"
    if [ "$rc" -eq 0 ]; then
      results+=("integration: ok")
    else
      results+=("integration: FAILED (details in $logs/integration.out)")
      failed=1
    fi
  fi
fi

# ---- what memcheck said, process by process
errors=0
leaks=0
incomplete=0
reports=0
for f in "$logs"/*.log; do
  [ -e "$f" ] || continue
  reports=$((reports + 1))
  summary=$(grep -E 'ERROR SUMMARY: [0-9]+ errors' "$f" | tail -n 1)
  if [ -z "$summary" ]; then
    # A process killed with SIGKILL (a test's crash simulation, or a timeout) leaves no summary.
    incomplete=$((incomplete + 1))
    continue
  fi
  n=$(sed -E 's/.*ERROR SUMMARY: ([0-9]+) errors.*/\1/' <<<"$summary")
  definite=$(sed -n -E 's/.*definitely lost: ([0-9,]+) bytes.*/\1/p' "$f" | tail -n 1 | tr -d ,)
  indirect=$(sed -n -E 's/.*indirectly lost: ([0-9,]+) bytes.*/\1/p' "$f" | tail -n 1 | tr -d ,)
  if [ "${definite:-0}" != 0 ] || [ "${indirect:-0}" != 0 ]; then
    leaks=$((leaks + 1))
  fi
  if [ "$n" != 0 ]; then
    errors=$((errors + 1))
    echo "--- $f: $summary (definitely lost ${definite:-0} B, indirectly lost ${indirect:-0} B; the program:"
    sed -n 's/^==[0-9]*== Command: //p' "$f" | head -n 1
    grep -E -m 3 -A 12 '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and|[0-9,]+ (\(|bytes))' "$f" |
      head -n 60
  fi
done
[ "$reports" -gt 0 ] || { results+=("memcheck: no report was written"); failed=1; }
if [ "$errors" -ne 0 ]; then
  failed=1
fi

echo
for r in "${results[@]}"; do echo "  $r"; done
echo "  memcheck: $reports process reports, $errors with errors, $leaks with definite/indirect leaks," \
  "$incomplete without a summary (killed)"
if [ "$failed" -ne 0 ]; then
  echo "valgrind.sh: FAILED (reports in $logs)"
  exit 1
fi
echo "valgrind.sh: no memcheck error and no leak in $reports processes; every test passed"
