#!/usr/bin/env bash
# Run the whole test suite: unit, trainer (CPU training), the tests against the local
# Kubernetes control plane and MinIO (started by the session fixture, or reused when
# tests/cluster/up.sh already runs), and end-to-end. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/python ]] || scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
