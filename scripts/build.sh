#!/usr/bin/env bash
# Configures and builds ocsp-agent with warnings as errors.
#   scripts/build.sh [--sanitize] [--release] [--dir DIR]
# --sanitize  AddressSanitizer + UndefinedBehaviorSanitizer (default directory build-asan/)
# --release   an optimised build without debug checks (CMAKE_BUILD_TYPE=Release)
# --dir DIR   build directory (default build/, relative paths are taken from the repository root)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitize=OFF
build_type=
dir=

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=ON ;;
    --release) build_type=Release ;;
    --dir) [ $# -ge 2 ] || { echo "build.sh: --dir needs a directory" >&2; exit 2; }; dir=$2; shift ;;
    --dir=*) dir=${1#--dir=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$dir" ]; then
  if [ "$sanitize" = ON ]; then dir=build-asan; else dir=build; fi
fi
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac

args=(-S "$root" -B "$dir" -DOA_WERROR=ON -DOA_SANITIZE="$sanitize")
[ -n "$build_type" ] && args+=(-DCMAKE_BUILD_TYPE="$build_type")

cmake "${args[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
echo "build.sh: built $dir/ocsp-agent (sanitize=$sanitize${build_type:+, $build_type})"
