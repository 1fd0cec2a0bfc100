#!/usr/bin/env bash
# Full check of spoolvfs: what it proves, in order.
#   fmt, clippy     the Rust code is formatted and lint-clean (warnings are errors)
#   cargo test      the unit and integration tests of the pure modules pass
#   build           `cargo build --release` produces target/release/libspoolvfs.so
#   c drivers       c/spool_writer.c compiles against the system SQLite (c/spoolvfs.h is valid C)
#   e2e             tests/e2e: the built extension, loaded into apsw, the system sqlite3 shell and
#                   a C program, keeps a backup that is always one committed state of the source
#                   and converges to it byte for byte, across journal modes, crashes and processes
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
  step e2e python3 -m pytest -q -p no:cacheprovider -rfE tests/e2e "$@" || true
else
  skip "c drivers" "build failed"
  skip e2e "build failed"
fi
summary
