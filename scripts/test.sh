#!/usr/bin/env bash
# The README's test command: set-up, then every Deno test, then every notebook executed headless
# (scripts/check_notebooks.py, outputs not written back), then one line "N passed, N failed".
# Counts each Deno test and test step, and each notebook; exits non-zero on any failure.
# --no-notebooks skips the notebooks (for a quick run); other arguments go to `deno test`.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
notebooks=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-notebooks" ]; then notebooks=0; else args+=("$a"); fi
done
log=$(mktemp)
NO_COLOR=1 deno task test "${args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -cE ' \.\.\. ok( |$)' "$log")
failed=$(grep -cE ' \.\.\. FAILED( |$)' "$log")
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$notebooks" = 1 ]; then
  /usr/bin/python3 scripts/check_notebooks.py --no-write 2>&1 | tee "$log"
  nb_status=${PIPESTATUS[0]}
  nb_line=$(grep -E '^check_notebooks: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n1)
  nb_passed=$(echo "$nb_line" | awk '{print $2}')
  nb_failed=$(echo "$nb_line" | awk '{print $4}')
  nb_passed=${nb_passed:-0}
  nb_failed=${nb_failed:-0}
  if [ "$nb_status" != 0 ] && [ "$nb_failed" = 0 ]; then nb_failed=1; fi
  passed=$((passed + nb_passed))
  failed=$((failed + nb_failed))
  [ "$nb_status" = 0 ] || status=1
fi
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
