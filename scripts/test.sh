#!/usr/bin/env bash
# Full check of spoolvfs: what it proves, in order.
#   fmt, clippy     the Rust code is formatted and lint-clean (warnings are errors)
#   cargo test      the unit and integration tests of the pure modules pass
#   build           `cargo build --release` produces target/release/libspoolvfs.so
#   c drivers       c/spool_writer.c compiles against the system SQLite (c/spoolvfs.h is valid C)
#   fault build     the test-only build with fault injection (`--features fault-inject`, in
#                   target/faults), exported as SPOOLVFS_FAULT_LIB for tests/e2e/test_faults.py
#   e2e             tests/e2e: the built extension, loaded into apsw, the system sqlite3 shell and
#                   a C program, keeps a backup that is always one committed state of the source
#                   and converges to it byte for byte, across journal modes, crashes and processes,
#                   injected and real faults (disk full, EIO, panics), bad configuration,
#                   out-of-band writes, consumer takeover and a damaged or deleted spool
#   torture         scripts/torture.py: kill -9 of several writer processes at random points
#                   (4 rounds x 3 writers per journal family); any broken invariant fails it
#   bench smoke     scripts/bench.sh --quick runs end to end (tiny sizes; results go to
#                   target/bench-smoke, timings are never asserted): the benchmark cannot rot
# Every step runs even when an earlier one failed (except those that need the build); a summary
# closes the output, and the exit status is non-zero if any step failed. Installs nothing (see
# .ci/run for that). Extra arguments go to pytest, e.g. `scripts/test.sh -k cli -x`.
# Environment: SPOOLVFS_SEED (replay a randomized run), SPOOLVFS_STEPS (workload size).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

step fmt cargo fmt --all -- --check || true
step clippy cargo clippy --all-targets -- -D warnings || true
step "cargo test" cargo test || true
if step build cargo build --release; then
  mkdir -p target/c
  step "c drivers" gcc -O2 -Wall -Wextra -Werror -o target/c/spool_writer c/spool_writer.c \
    -lsqlite3 || true
  export SPOOLVFS_LIB="${SPOOLVFS_LIB:-$(realpath "${CARGO_TARGET_DIR:-target}")/release/libspoolvfs.so}"
  fault_target="${CARGO_TARGET_DIR:-target}/faults"
  if step "fault build" cargo build --release --features fault-inject --target-dir "$fault_target"
  then
    export SPOOLVFS_FAULT_LIB="${SPOOLVFS_FAULT_LIB:-$(realpath "$fault_target")/release/libspoolvfs.so}"
  else
    # never test a stale fault build: the fault tests ERROR on a missing library
    export SPOOLVFS_FAULT_LIB="$(realpath -m "$fault_target")/release/fault-build-failed.so"
  fi
  step e2e python3 -m pytest -q -p no:cacheprovider -rfEs tests/e2e "$@" || true
  step torture python3 scripts/torture.py --lib "$SPOOLVFS_LIB" --rounds 4 --writers 3 || true
  step "bench smoke" env BENCH_OUT=target/bench-smoke BENCH_DIR=target/bench-smoke-work \
    scripts/bench.sh --quick || true
else
  skip "c drivers" "build failed"
  skip "fault build" "build failed"
  skip e2e "build failed"
  skip torture "build failed"
  skip "bench smoke" "build failed"
fi
summary
