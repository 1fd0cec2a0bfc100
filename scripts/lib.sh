# Shared helpers for scripts/test.sh, scripts/bench.sh, scripts/sqlite_testsuite.sh and .ci/run. Source it; it defines functions only.
# shellcheck shell=bash

# as_root CMD...: run CMD as root (directly when already root, else through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Step bookkeeping: `step NAME CMD...` runs CMD, prints a banner and its duration, and records
# "PASS"/"FAIL" for the summary. It never exits; call `summary` at the end.
STEP_NAMES=()
STEP_RESULTS=()

step() {
  local name=$1 start rc
  shift
  printf '\n==> %s: %s\n' "$name" "$*"
  start=$(date +%s)
  if "$@"; then rc=0; else rc=$?; fi
  STEP_NAMES+=("$name")
  if [ "$rc" -eq 0 ]; then
    STEP_RESULTS+=("PASS ($(( $(date +%s) - start ))s)")
  else
    STEP_RESULTS+=("FAIL (exit $rc, $(( $(date +%s) - start ))s)")
  fi
  return "$rc"
}

# skip NAME REASON: record a step that was not run.
skip() {
  STEP_NAMES+=("$1")
  STEP_RESULTS+=("NOT RUN ($2)")
}

# summary: print every step's result; return non-zero if any step did not pass.
summary() {
  local i bad=0
  printf '\n==> summary\n'
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-16s %s\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}"
    case "${STEP_RESULTS[$i]}" in PASS*) ;; *) bad=1 ;; esac
  done
  return "$bad"
}

# The first Debian archive URI in the system's apt sources (the suite is chosen separately).
debian_mirror() {
  cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    2>/dev/null |
    awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) print $i}' |
    grep -m 1 -E '/debian/?$' || true
}

# fetch_sqlite_source DIR: download the `sqlite3` source package of Debian unstable with apt (a
# private source list and cache in DIR/apt: the system's apt configuration is not touched), unpack
# it under DIR/src and print the source tree's path. ~15 MB.
fetch_sqlite_source() {
  local dir=$1 mirror apt_opts
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || { echo "no Debian archive in the apt sources" >&2; return 1; }
  rm -rf "$dir/apt" "$dir/src"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/src"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
    >"$dir/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$(realpath "$dir/apt/sources.list")"
    -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$(realpath "$dir/apt/lists")"
    -o "Dir::Cache=$(realpath "$dir/apt/cache")" -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update >&2 || return 1
  (cd "$dir/src" && apt-get "${apt_opts[@]}" -qq source --download-only sqlite3 >&2) || return 1
  tar -C "$dir/src" -xJf "$(ls "$dir"/src/sqlite3_*.orig.tar.xz)" || return 1
  ls -d "$dir"/src/sqlite3-*/ | head -1
}
