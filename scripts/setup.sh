#!/usr/bin/env bash
# Set up this checkout for development on a fresh machine: a virtual environment in
# .venv with the API, operator, trainer and dev dependencies at the versions pinned in
# constraints.txt. Safe to run again; uv's cache makes later runs fast.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup.sh: Python 3.11 or newer is needed (found $("$python" --version 2>&1))" >&2
  exit 1
}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==26.3"
# uv installs the pinned set: it keeps every wheel in its own cache (~/.cache/uv) and hard-links
# them into the venv, so a second clone on the same machine installs in seconds, where pip
# downloads the multi-GB CUDA torch again.
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
if [[ -z "${SSL_CERT_FILE:-}" && -r /etc/ssl/certs/ca-certificates.crt ]]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt # the system's trust, as pip uses it
fi
.venv/bin/uv pip install -q --python .venv/bin/python -c constraints.txt -e ".[operator,trainer,dev,kubectl]"
# Debian's Chromium and its WebDriver: the dashboard's browser tests drive them (no browser download).
if ! [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "setup.sh: install Debian's chromium and chromium-driver (as root) for the dashboard's browser tests" >&2
  fi
fi
echo "setup.sh: .venv ready ($(.venv/bin/python --version))"
