#!/usr/bin/env bash
# Run tests/reliability REPEAT times while BUSY busy loops hold the CPUs (issue 15: no flaky
# test on a loaded machine). Usage: make test-loaded [REPEAT=10] [BUSY=2]
# One line per repetition goes to stdout; each run's output to .masters/loaded/run-N.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPEAT=${REPEAT:-10}; BUSY=${BUSY:-2}; OUT=.masters/loaded
mkdir -p "$OUT"
pids=()
for _ in $(seq "$BUSY"); do .venv/bin/python -c 'while True: pass' & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
failed=0
for i in $(seq "$REPEAT"); do
  start=$(date +%s)
  .venv/bin/pytest -q -p no:cacheprovider tests/reliability "$@" > "$OUT/run-$i.log" 2>&1
  rc=$?
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "run $i: rc=$rc $(tail -1 "$OUT/run-$i.log" | tr -d '=') ($(( $(date +%s) - start )) s, load $load)"
  [ $rc -eq 0 ] || failed=$((failed + 1))
done
echo "$failed of $REPEAT runs failed"
[ $failed -eq 0 ]
