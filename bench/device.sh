#!/usr/bin/env bash
# Runs gemkit on a remote GPU machine: the adapter it finds, `deno task bench`
# beside PyTorch (CPU at 1 and 16 threads, and CUDA), then the test suite on that adapter.
#
# Nothing can be fetched there, so everything travels with the working tree, made here by
# `bench/device.sh --prepare` into .dev/ and .gl/ (both in .git/info/exclude):
#   .dev/deno.xz          this machine's deno binary, xz'd (96 MB -> 30 MB; the carry limit is 64 MiB)
#   .dev/denodir.tar.xz   a DENO_DIR holding the npm packages (TensorFlow.js pruned to its node bundles)
#   .dev/data.tar.xz      ../shared/data, which does not travel
#   .gl/*.deb             the Vulkan loader (the machine has NVIDIA's driver and ICD, no loader)
# Then: run(command="bash bench/device.sh", carry=[".dev", ".gl"]). Results and logs go to $OUT:
# results_h100.json (the bench records), bench.log, test.log, probe.log, profile.log.
# BENCHES="model" runs one suite; TESTS=0 stops after the bench; RESULTS names the results file.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p .dev .gl /tmp/amd64/partial
  grep -qx '/.dev/' .git/info/exclude 2>/dev/null || printf '/.dev/\n/.gl/\n' >>.git/info/exclude
  xz -T0 -9 -c "$(readlink -f "$(command -v deno)")" >.dev/deno.xz
  dd=$(mktemp -d)
  DENO_DIR=$dd/dd deno cache bench/bench.ts tests/*.ts src/cli/*.ts mod.ts
  # TensorFlow.js resolves to its CommonJS node bundles under Deno; the rest is 60 MB of ESM
  # sources, other bundles and source maps.
  for p in "$dd"/dd/npm/registry.npmjs.org/@tensorflow/*/*/dist; do
    (cd "$p" && rm -rf miniprogram ops kernels && find . -name '*.map' -delete &&
      find . -name '*.d.ts' -delete && find . -maxdepth 1 -name 'tf-*.js' ! -name '*.node.js' -delete)
  done
  tar -C "$dd" -cf - dd | xz -T0 -6 >.dev/denodir.tar.xz
  tar -C "${GEMKIT_DATA:-../shared/data}" -cf - . | xz -T0 -6 >.dev/data.tar.xz
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  du -sh .dev/* .gl
  exit 0
fi

OUT=${OUT:-/tmp/gemkit-out}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "== $1 ($(($(date +%s) - t0)) s)"; }

stamp setup
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
mkdir -p /tmp/gk /tmp/shared/data
# Python's lzma, not xz(1): the image is not known to have xz-utils.
python3 - <<'EOF'
import lzma, shutil, tarfile
with lzma.open(".dev/deno.xz") as src, open("/tmp/gk/deno", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 22)
tarfile.open(".dev/denodir.tar.xz").extractall("/tmp")
tarfile.open(".dev/data.tar.xz").extractall("/tmp/shared/data")
EOF
chmod +x /tmp/gk/deno
export PATH=/tmp/gk:$PATH DENO_DIR=/tmp/dd GEMKIT_DATA=/tmp/shared/data DENO_NO_UPDATE_CHECK=1
export DENO_WEBGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp NO_COLOR=1
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
nproc
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp probe
timeout 60 deno run -A --cached-only bench/probe.ts 2>&1 | tee "$OUT/probe.log"

# The bench first: it is what the lease is for. Then the tests, on the GPU profile.
stamp bench
GEMKIT_PYTHON=$(command -v python3) GEMKIT_TORCH_THREADS=${TORCH_THREADS-1,16} \
  GEMKIT_TORCH_CUDA=${TORCH_CUDA-1} GEMKIT_BENCH_RESULTS="$OUT/${RESULTS:-results_h100.json}" \
  timeout "${BENCH_TIMEOUT:-330}" deno run -A --cached-only bench/bench.ts ${BENCHES:-} 2>&1 |
  tee "$OUT/bench.log"

[ "${TESTS:-1}" = 1 ] || { stamp done; exit 0; }
stamp tests
timeout "${TEST_TIMEOUT:-150}" deno test -A --no-check --cached-only ${TEST_FILES:-tests/} >"$OUT/test.log" 2>&1
echo "tests exit $?"
grep -E ' \.\.\. FAILED' "$OUT/test.log" | head -30
echo "$(grep -cE ' \.\.\. ok( |$)' "$OUT/test.log") passed, $(grep -cE ' \.\.\. FAILED( |$)' "$OUT/test.log") failed"
# Where the GPU time of the model steps goes on this adapter (gemkit only, quick).
stamp profile
GEMKIT_PROFILE=1 GEMKIT_BENCH_QUICK=1 GEMKIT_TORCH_THREADS= GEMKIT_BENCH_RESULTS=/tmp/profile.json \
  timeout "${PROFILE_TIMEOUT:-60}" deno run -A --cached-only bench/bench.ts model >"$OUT/profile.log" 2>&1
echo "profile exit $?"
stamp done
