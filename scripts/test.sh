#!/usr/bin/env bash
# The README's test command: set-up, then every test under Deno, the CPU and GPU tests under Bun
# (the same files, written against node:test; see the Bun part below), then every notebook
# executed headless (scripts/check_notebooks.py, outputs not written back), then one line
# "N passed, N failed". Counts each Deno test and test step, each Bun test, and each notebook;
# exits non-zero on any failure.
# --no-notebooks and --no-bun skip those parts (for a quick run); other arguments go to `deno test`.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
notebooks=1
bun=1
args=()
for a in "$@"; do
  case "$a" in
    --no-notebooks) notebooks=0 ;;
    --no-bun) bun=0 ;;
    *) args+=("$a") ;;
  esac
done
log=$(mktemp)
NO_COLOR=1 deno task test "${args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -cE ' \.\.\. ok( |$)' "$log")
failed=$(grep -cE ' \.\.\. FAILED( |$)' "$log")
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$bun" = 1 ]; then
  # Under Bun (WebGPU from Dawn on Mesa 25): every CPU and GPU test, with the tuning loops over
  # the adapter's own tuning only (GEMKIT_TEST_TUNINGS, tests/helpers.ts). The tests of the fused
  # inference kernels skip there, with their reason (fusedSkip): Mesa 24+ takes minutes to compile
  # them from a cold cache and the tuning never runs them; the paper-shape checkpoints (GBs,
  # scaleSkip) run under Deno only. Deno runs every test and tuning.
  NO_COLOR=1 GEMKIT_TEST_TUNINGS=adapter node_modules/.bin/bun test --timeout 600000 tests/cpu/ \
    tests/gpu/ 2>&1 | tee "$log"
  bun_status=${PIPESTATUS[0]}
  # Bun's own totals (its per-test lines repeat skipped and failed tests in a closing summary).
  bun_passed=$(grep -E '^ *[0-9]+ pass$' "$log" | tail -n1 | awk '{print $1}')
  bun_failed=$(grep -E '^ *[0-9]+ fail$' "$log" | tail -n1 | awk '{print $1}')
  bun_skipped=$(grep -E '^ *[0-9]+ skip$' "$log" | tail -n1 | awk '{print $1}')
  bun_passed=${bun_passed:-0}
  bun_failed=${bun_failed:-0}
  bun_skipped=${bun_skipped:-0}
  if [ "$bun_status" != 0 ] && [ "$bun_failed" = 0 ]; then bun_failed=1; fi
  echo "bun: $bun_passed passed, $bun_failed failed, $bun_skipped skipped (fused inference" \
    "kernels, off in this adapter's tuning, and the paper-shape checkpoints; the Deno run covers" \
    "them)"
  passed=$((passed + bun_passed))
  failed=$((failed + bun_failed))
  [ "$bun_status" = 0 ] || status=1
fi
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
