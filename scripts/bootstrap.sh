#!/usr/bin/env bash
# Install what the tests and local development need on a fresh machine:
#   - uv (the workspace's package manager), pinned, in .tools/uv (scripts/uv.sh)
#   - the workspace venv (.venv) from uv.lock
#   - a Chroma server in its own venv (.tools/chroma): the full chromadb wheel clashes
#     with chromadb-client, which the services use
#   - redis-server (Debian's package; installed with apt when running as root)
#   - chromium + chromium-driver (Debian's), for the dashboard's browser tests: Selenium
#     is pointed at /usr/bin/chromedriver and never downloads a driver or a browser
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMA_VERSION=$(awk '/^name = "chromadb-client"/{getline; gsub(/[^0-9.]/,""); print; exit}' uv.lock)
UV=$(scripts/uv.sh)

"$UV" sync --frozen --quiet

if [ ! -x .tools/chroma/bin/chroma ]; then
  echo "bootstrap: installing the Chroma server ${CHROMA_VERSION} into .tools/chroma" >&2
  "$UV" venv --quiet --python 3.11 .tools/chroma 2>/dev/null || "$UV" venv --quiet .tools/chroma
  "$UV" pip install --quiet --python .tools/chroma/bin/python "chromadb==${CHROMA_VERSION}"
fi

if ! compgen -G '.tools/rotel/lib/python3*/site-packages/rotel/rotel-agent' >/dev/null; then
  echo "bootstrap: installing the rotel collector into .tools/rotel" >&2
  "$UV" venv --quiet --python 3.11 .tools/rotel
  "$UV" pip install --quiet --python .tools/rotel/bin/python -r docker/otel-collector/requirements.txt
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libpython3.11 >/dev/null
  else
    echo "bootstrap: libpython3.11 is missing (the rotel collector links it): sudo apt-get install libpython3.11" >&2
  fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server with apt" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # Debian starts a system redis on 6379; the tests run their own on free ports.
    (systemctl stop redis-server || service redis-server stop) >/dev/null 2>&1 || true
  else
    echo "bootstrap: redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)" >&2
    exit 1
  fi
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium and chromium-driver with apt (the dashboard's browser tests)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "bootstrap: chromium and chromium-driver are missing (the dashboard's browser tests): sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
