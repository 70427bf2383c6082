#!/usr/bin/env bash
# Installs everything glmserve needs on a fresh Debian/Ubuntu machine, idempotently.
#   scripts/install.sh          Python venv of exactly locks/dev.txt: vLLM (CPU build), Ray Serve, glmserve
#   scripts/install.sh --test   also the test tools: redis-server, prometheus/promtool, helm, kubectl
# Environment: VENV (default .venv), PYTHON (default python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (use --test or --help)" >&2; exit 2 ;;
  esac
done

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
step() { printf '\n==> %s\n' "$*"; }
# pip on some machines warns about every missing local index directory; keep the output readable.
pip_q() { "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  step "apt: installing ${missing[*]}"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if [[ ! -x $VENV/bin/python ]]; then
  step "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The development environment is exactly locks/dev.txt (`make lock` regenerates it from
# pyproject.toml). --no-deps: the lock is already complete, and it deliberately leaves out PyPI's
# CUDA builds of torchvision/torchaudio/torchcodec (they make `import vllm` fail next to the CPU
# torch) and NIXL's CUDA 13 half. torch is its CPU build (2.13.0+cpu), found through pip's
# find-links or PyTorch's CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
LOCK=locks/dev.txt
STAMP=$VENV/.glmserve-installed
if ! $PY -c 'import vllm, ray.serve' >/dev/null 2>&1 || [[ pyproject.toml -nt $STAMP || $LOCK -nt $STAMP ]]; then
  step "pip: the locked packages of $LOCK"
  pip_q install -q --no-deps -r "$LOCK"
  mapfile -t overwritten < <("$PY" scripts/locks.py overwritten "$LOCK")
  if ((${#overwritten[@]})); then
    step "pip: reinstalling what a bundler overwrote (scripts/locks.py BUNDLERS): ${overwritten[*]}"
    pip_q install -q --no-deps --force-reinstall "${overwritten[@]}"
  fi
  step "pip: glmserve (editable)"
  pip_q install -q --no-deps --no-build-isolation -e .
  mapfile -t stale < <("$PY" scripts/locks.py stale "$LOCK")
  if ((${#stale[@]})); then
    step "pip: removing what $LOCK no longer lists: ${stale[*]}"
    pip_q uninstall -q -y "${stale[@]}"
  fi
  "$PY" scripts/locks.py check "$LOCK"
  $PY -c 'import vllm, ray.serve, glmserve' >/dev/null
  touch "$STAMP"
fi

if ((WITH_TEST)); then
  apt_install redis-server prometheus unzip
  scripts/install-k8s-tools.sh
fi
step "installed: $($PY -c 'import vllm, ray; print(f"vllm {vllm.__version__}, ray {ray.__version__}")')"
