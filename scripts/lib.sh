# Shared helpers for scripts/test.sh and .ci/run. Source it; it defines functions only.
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
