#!/usr/bin/env bash
# Benchmark suite of spoolvfs: what a live backup costs the application's writers, how fresh and
# cheap the backup is, and how that compares with the other ways of backing up SQLite, measured
# in one run on this machine (writer cost and where the writer's CPU time goes, backup lag and the
# highest rate it keeps up with, consumer throughput and CPU, peak memory of a huge transaction,
# bringing a big backup up to date vs the Online Backup API / VACUUM INTO / sqlite3_rsync,
# behaviour under continuous writes, and the disk's own limits). Arms are interleaved and
# repeated; medians and ratios are reported, targets are shown next to them and never asserted.
#
# Usage: scripts/bench.sh [--quick|--full]
#   --full   (default) 1 GB databases and transactions, 5-15 repetitions: ~35-40 min, ~8 GB of disk
#   --quick  tiny sizes (10 MB), CI smoke run: ~1-2 min; its numbers are not representative
# Writes bench/results.md, bench/results.json and bench/throughput_lag.png.
#
# Steps: builds the release library (and snapshots it, so a rebuild during the run changes
# nothing), compiles c/bench.c against the system SQLite, finds or builds sqlite3_rsync (SQLite
# >= 3.47, not in Debian 12: built from the SQLite source package of Debian unstable, full runs
# only), installs matplotlib if missing, then runs scripts/bench.py.
# Environment: BENCH_DIR (where the benchmark files live; default target/bench), BENCH_OUT (where
# the results go; default bench, the committed ones), SPOOLVFS_LIB
# (measure this library instead of building one), SQLITE3_RSYNC (path to a sqlite3_rsync).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  --full | "") ;;
  *) echo "usage: scripts/bench.sh [--quick|--full]" >&2; exit 64 ;;
esac
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
work=${BENCH_DIR:-target/bench}
mkdir -p "$work" target/c bench

# build_rsync DIR: build only the sqlite3_rsync tool from the `sqlite3` source package of Debian
# unstable (fetch_sqlite_source, scripts/lib.sh) into DIR/sqlite3_rsync. ~15 MB download, ~1-2 min
# of CPU.
build_rsync() {
  local dir=$1 src
  src=$(fetch_sqlite_source "$dir") || return 1
  (cd "$src" && ./configure >../configure.log 2>&1 && make sqlite3_rsync >../make.log 2>&1)
  cp "$src/sqlite3_rsync" "$dir/sqlite3_rsync"
  rm -rf "$dir/apt" "$dir/src"
}

# Sets rsync_bin to a usable sqlite3_rsync, or rsync_note to why there is none.
rsync_bin="" rsync_note=""
locate_rsync() {
  local cache=target/sqlite3-rsync
  if [ -n "${SQLITE3_RSYNC:-}" ]; then
    rsync_bin=$SQLITE3_RSYNC
  elif command -v sqlite3_rsync >/dev/null; then
    rsync_bin=$(command -v sqlite3_rsync)
  elif [ -x "$cache/sqlite3_rsync" ]; then
    rsync_bin=$(realpath "$cache/sqlite3_rsync")
  elif [ "$mode" = quick ]; then
    rsync_note="not on this machine (SQLite >= 3.47 tool, Debian 12 ships 3.40) and not built by
      --quick runs (building it takes ~1-2 min): run scripts/bench.sh --full once, or set
      SQLITE3_RSYNC"
  else
    echo "bench: building sqlite3_rsync from Debian's SQLite source package ..." >&2
    mkdir -p "$cache"
    if build_rsync "$cache"; then
      rsync_bin=$(realpath "$cache/sqlite3_rsync")
    else
      rsync_note="could not be built from Debian's SQLite source package (see the messages of
        scripts/bench.sh); set SQLITE3_RSYNC to a sqlite3_rsync to include it"
    fi
  fi
  rsync_note=$(echo "$rsync_note" | tr -s ' \n' ' ')
}

if [ -z "${SPOOLVFS_LIB:-}" ]; then
  cargo build --release --quiet
  SPOOLVFS_LIB=${CARGO_TARGET_DIR:-target}/release/libspoolvfs.so
fi
cp "$SPOOLVFS_LIB" "$work/libspoolvfs.so"
gcc -O2 -Wall -Wextra -Werror -pthread -o target/c/bench c/bench.c -lsqlite3 -lm
locate_rsync
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "bench: installing matplotlib (for bench/throughput_lag.png) ..." >&2
  python3 -m pip install --quiet matplotlib ||
    python3 -m pip install --quiet --break-system-packages matplotlib
fi

exec python3 scripts/bench.py --mode "$mode" --bin target/c/bench --lib "$work/libspoolvfs.so" \
  --work "$work" --out "${BENCH_OUT:-bench}" --rsync "$rsync_bin" --rsync-note "$rsync_note" \
  --command "scripts/bench.sh --$mode"
