#!/usr/bin/env bash
# The deployment checks, with no container runtime and no cluster: renders every kustomization
# under deploy/ and validates each resource offline (Kubernetes schemas from kubernetes-validate,
# KServe and Kubeflow schemas from deploy/schemas); builds the wheel as the image's build stage
# does, installs it into a fresh virtualenv and starts the Dockerfile's own ENTRYPOINT + CMD on
# 127.0.0.1, probing /v2/health/ready, the HEALTHCHECK command and /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  echo "deploy_check: needs kubectl (with kustomize v5) or kustomize on PATH" >&2
  exit 1
fi
if ! python -c "import kubernetes_validate" 2>/dev/null; then
  echo "deploy_check: needs kubernetes-validate (pip install '.[test]')" >&2
  exit 1
fi

wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
echo "==> wheel (pip wheel --no-deps --no-build-isolation)"
python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation . -w "$wheels"

echo "==> manifests and the container entrypoint"
AIARCH_WHEEL_DIR="$wheels" python -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/deploy
