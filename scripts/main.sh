#!/usr/bin/env bash
# The README's main-job command: set-up, then `deno task train` with the default recipe (GEM
# fine-tuning of stories260K on TinyStories, then the before/after report). Extra arguments go
# to `deno task train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
deno task train "$@"
