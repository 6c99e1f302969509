#!/usr/bin/env bash
# Installs what gemkit needs on a fresh Debian machine, and nothing that is already there:
#   Deno (from the npm package `deno`), Mesa's Vulkan driver (the llvmpipe WebGPU adapter), what the
#   notebooks run with (Jupyter's client and nbclient for Debian's /usr/bin/python3, headless
#   Chromium for their figures, Deno's Jupyter kernel), and with --bench, Debian's PyTorch (with
#   OpenBLAS) for the benchmark's reference rows.
# Bun and Node: the npm packages of package.json (Bun itself, `webgpu` = Dawn, the Hugging Face
#   libraries) into node_modules/, the CLIs bundled for Node into dist/node, and Mesa 25's lavapipe unpacked into /opt/gemkit beside the
#   system's Mesa 22.3.6, because Dawn rejects Mesa 22's lavapipe. Deno keeps Mesa 22.3.6: it
#   compiles kernels many times faster from a cold cache, and the committed study records were
#   made on it (README, "Runtimes").
# Idempotent: a second run only checks. Prints the Mesa versions it leaves in place.
set -euo pipefail
cd "$(dirname "$0")/.."

DENO_VERSION=2.9.6
# Debian bookworm's Mesa, used by Deno (wgpu); installed at exactly this version.
MESA_SYSTEM=22.3.6-1+deb12u2
# bookworm-backports' Mesa, unpacked for Dawn (Bun, Node); the .deb is checked against this hash.
MESA_DAWN=25.0.7-2~bpo12+1
MESA_DAWN_SHA256=3899f1800424c60a05df5d6913076a526ca8fdbabec43672cd397563d1ca3263
MESA_DAWN_DIR=/opt/gemkit/mesa-25.0.7
bench=0
for a in "$@"; do
  case "$a" in
    --bench) bench=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/gemkit-apt.log 2>&1; then
    $SUDO apt-get update >>/tmp/gemkit-apt.log 2>&1
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/gemkit-apt.log 2>&1 || {
      echo "setup: apt-get failed; see /tmp/gemkit-apt.log" >&2
      exit 1
    }
  fi
}

apt_install mesa-vulkan-drivers python3-nbclient python3-nbformat jupyter-client chromium python3-numpy
# Debian's torch does its fp32 GEMMs through libblas.so.3: OpenBLAS, not the reference BLAS (which
# made PyTorch's CPU figures several times slower on a machine without it).
if [ "$bench" = 1 ]; then apt_install python3-torch libopenblas0-pthread; fi

# Mesa for Deno: exactly MESA_SYSTEM (kernel compile times and bitwise results depend on it).
mesa=$(dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [ "$mesa" != "$MESA_SYSTEM" ]; then
  echo "setup: mesa-vulkan-drivers $mesa -> $MESA_SYSTEM" >&2
  $SUDO apt-get install -y --allow-downgrades --no-install-recommends \
    "mesa-vulkan-drivers=$MESA_SYSTEM" >>/tmp/gemkit-apt.log 2>&1 || {
    echo "setup: could not install mesa-vulkan-drivers=$MESA_SYSTEM; see /tmp/gemkit-apt.log" >&2
    exit 1
  }
fi

# Mesa for Dawn: the backports package unpacked (not installed) into MESA_DAWN_DIR, with a driver
# manifest that names its library by absolute path (src/platform/platform.ts selects it).
if [ ! -f "$MESA_DAWN_DIR/lvp_icd.json" ]; then
  echo "setup: unpacking mesa-vulkan-drivers $MESA_DAWN into $MESA_DAWN_DIR" >&2
  if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
      grep -v security | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "${mirror%/}" | $SUDO tee /etc/apt/sources.list.d/gemkit-backports.sources >/dev/null
    $SUDO apt-get update >>/tmp/gemkit-apt.log 2>&1
  fi
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "mesa-vulkan-drivers=$MESA_DAWN" >>/tmp/gemkit-apt.log 2>&1) || {
    echo "setup: apt-get download mesa-vulkan-drivers=$MESA_DAWN failed; see /tmp/gemkit-apt.log" >&2
    exit 1
  }
  deb=$(ls "$tmp"/mesa-vulkan-drivers_*.deb)
  echo "$MESA_DAWN_SHA256  $deb" | sha256sum -c --quiet - || {
    echo "setup: $deb does not have the expected SHA-256" >&2
    exit 1
  }
  $SUDO mkdir -p "$MESA_DAWN_DIR"
  $SUDO dpkg-deb -x "$deb" "$MESA_DAWN_DIR/root"
  printf '{"ICD": {"api_version": "1.4.305", "library_path": "%s"}, "file_format_version": "1.0.0"}\n' \
    "$MESA_DAWN_DIR/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" | $SUDO tee "$MESA_DAWN_DIR/lvp_icd.json" >/dev/null
  rm -rf "$tmp"
fi

have=""
if command -v deno >/dev/null 2>&1; then have=$(deno --version | head -n1 | awk '{print $2}'); fi
if [ "$have" != "$DENO_VERSION" ]; then
  echo "setup: npm install -g deno@$DENO_VERSION (found: ${have:-none})" >&2
  $SUDO npm install -g "deno@$DENO_VERSION" >/tmp/gemkit-npm.log 2>&1 || {
    echo "setup: npm install failed; see /tmp/gemkit-npm.log" >&2
    exit 1
  }
  hash -r
fi
command -v deno >/dev/null || { echo "setup: deno is not on PATH after install ($(npm prefix -g)/bin)" >&2; exit 1; }

# Deno's Jupyter kernel, registered for the user that runs the notebooks.
if [ ! -f "${JUPYTER_DATA_DIR:-$HOME/.local/share/jupyter}/kernels/deno/kernel.json" ]; then
  echo "setup: deno jupyter --install" >&2
  deno jupyter --install >/dev/null 2>&1 || { echo "setup: deno jupyter --install failed" >&2; exit 1; }
fi

# Bun, Dawn's `webgpu` and the Hugging Face libraries for Bun and Node, as package.json pins them.
if [ ! -x node_modules/.bin/bun ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm install (Bun, webgpu)" >&2
  npm install --no-audit --no-fund >/tmp/gemkit-npm.log 2>&1 || {
    echo "setup: npm install failed; see /tmp/gemkit-npm.log" >&2
    exit 1
  }
fi

# Node 20 runs JavaScript only: the CLIs bundled for it into dist/node (rebuilt when src/ changes).
if [ ! -f dist/node/generate.js ] || [ -n "$(find src package.json -newer dist/node/generate.js -print -quit)" ]; then
  node_modules/.bin/bun build src/cli/train.ts src/cli/generate.ts src/cli/embed.ts \
    src/cli/eval.ts src/cli/sweep.ts src/cli/convert.ts src/cli/data.ts --target node --outdir dist/node \
    >/tmp/gemkit-build.log 2>&1 || {
    echo "setup: bun build for Node failed; see /tmp/gemkit-build.log" >&2
    exit 1
  }
fi

echo "setup: Mesa $(dpkg-query -W -f '${Version}' mesa-vulkan-drivers) for Deno," \
  "Mesa $MESA_DAWN ($MESA_DAWN_DIR) for Bun/Node; bun $(node_modules/.bin/bun --version)" >&2
