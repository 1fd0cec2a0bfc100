#!/usr/bin/env bash
# Crash torture: N writer processes x random kill -9 points x both journal families (+ simulated
# power loss of the spool tail). Proves that after any kill the source and the backup are each one
# committed state, and that the backup converges to the source on the next open.
# Usage: scripts/torture.sh [--rounds N] [--writers W] [--modes wal,delete] [--seed S] ...
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/torture.py --lib target/release/libspoolvfs.so "$@"
