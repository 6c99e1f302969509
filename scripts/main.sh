#!/usr/bin/env bash
# The README's main-job command: set-up (with the benchmark's PyTorch), then the main job.
# Until `deno task train` lands, the main job is the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --bench
deno task bench "$@"
