#!/usr/bin/env bash
# Live backup demo: builds spoolvfs, runs a write-heavy workload through the `spool` VFS for a few
# seconds while printing how far the backup lags, lets a separate process check the live backup
# with plain SQLite the whole time, then verifies the final backup against the source.
# Usage: scripts/demo.sh [seconds] [journal_mode]      (defaults: 10 wal)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
if ! python3 -c 'import apsw' 2>/dev/null; then
  echo "demo: installing apsw (Python SQLite bindings with extension loading) ..." >&2
  python3 -m pip install --quiet apsw 2>/dev/null || python3 -m pip install --quiet --user apsw
fi
exec python3 scripts/demo.py --lib target/release/libspoolvfs.so "$@"
