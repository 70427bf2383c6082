#!/usr/bin/env bash
# Builds the images with whichever OCI builder is installed (`make images`):
#   images/operator  REGISTRY/operator:TAG  the kopf operator and the router (locks/operator.txt)
#   images/serving   REGISTRY/serving:TAG   Ray pods: vLLM, Ray Serve LLM, NIXL (locks/serving-VARIANT.txt)
# Usage: scripts/build-images.sh [operator|serving]...   (default: both)
# Environment: BUILDER (docker, podman or buildah; default: the first that works), REGISTRY (default
# ghcr.io/glmserve), TAG (default: the package version), VARIANT (cuda or cpu, default cuda), BASE (a
# Debian bookworm image; default debian:bookworm-slim; images/debian-base.sh makes one from Debian's
# packages where no registry is reachable), PIP_CERT (a CA bundle for pip, mounted into the build),
# TORCH_CPU_LINKS (VARIANT=cpu: where torch's CPU build is; a local directory is mounted into the build).
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-ghcr.io/glmserve}
TAG=${TAG:-$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}
VARIANT=${VARIANT:-cuda}
names=("$@")
((${#names[@]})) || names=(operator serving)
for name in "${names[@]}"; do
  [[ $name == operator || $name == serving ]] || { echo "build-images.sh: unknown image '$name' (operator or serving)" >&2; exit 2; }
done
case $VARIANT in cuda|cpu) ;; *) echo "build-images.sh: VARIANT must be cuda or cpu, not '$VARIANT'" >&2; exit 2 ;; esac

if [[ -z ${BUILDER:-} ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then BUILDER=docker
  elif command -v podman >/dev/null; then BUILDER=podman
  elif command -v buildah >/dev/null; then BUILDER=buildah
  else
    echo "build-images.sh: no OCI builder: install Docker, or Debian's buildah or podman" >&2; exit 1
  fi
fi
case $BUILDER in
  docker) build=(docker build) ;;
  podman) build=(podman build) ;;
  buildah) build=(buildah bud) ;;
  *) echo "build-images.sh: BUILDER must be docker, podman or buildah, not '$BUILDER'" >&2; exit 2 ;;
esac
args=()
if [[ -n ${BASE:-} ]]; then args+=(--build-arg "BASE=$BASE"); fi
if [[ -n ${PIP_CERT:-} && -f $PIP_CERT && $BUILDER != docker ]]; then
  args+=(--volume "$(realpath "$PIP_CERT"):/run/pip-cert.pem:ro" --build-arg PIP_CERT=/run/pip-cert.pem)
fi

if [[ -n ${TORCH_CPU_LINKS:-} ]]; then
  args+=(--build-arg "TORCH_CPU_LINKS=$TORCH_CPU_LINKS")
  if [[ -d $TORCH_CPU_LINKS && $BUILDER != docker ]]; then
    args+=(--volume "$(realpath "$TORCH_CPU_LINKS"):$TORCH_CPU_LINKS:ro")
  fi
fi

for name in "${names[@]}"; do
  extra=()
  suffix=""
  if [[ $name == serving ]]; then
    extra=(--build-arg "VARIANT=$VARIANT")
    [[ $VARIANT == cuda ]] || suffix="-$VARIANT"
  fi
  image="$REGISTRY/$name:$TAG$suffix"
  printf '\n==> %s: %s\n' "$BUILDER" "$image"
  "${build[@]}" "${args[@]}" "${extra[@]}" -f "images/$name/Dockerfile" -t "$image" .
done
