#!/usr/bin/env bash
# The README's test command: set-up, then every test, then one line "N passed, N failed".
# Counts each Deno test and test step; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
log=$(mktemp)
NO_COLOR=1 deno task test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -cE ' \.\.\. ok( |$)' "$log")
failed=$(grep -cE ' \.\.\. FAILED( |$)' "$log")
rm -f "$log"
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
