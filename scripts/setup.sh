#!/usr/bin/env bash
# Installs what gemkit needs on a fresh Debian machine, and nothing that is already there:
#   Deno (from the npm package `deno`), Mesa's Vulkan driver (the llvmpipe WebGPU adapter), what the
#   notebooks run with (Jupyter's client and nbclient for Debian's /usr/bin/python3, headless
#   Chromium for their figures, Deno's Jupyter kernel), and with --bench, Debian's PyTorch for the
#   benchmark's reference rows.
# Idempotent: a second run only checks.
set -euo pipefail

DENO_VERSION=2.9.6
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

apt_install mesa-vulkan-drivers python3-nbclient python3-nbformat jupyter-client chromium
if [ "$bench" = 1 ]; then apt_install python3-torch; fi

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
