#!/usr/bin/env bash
# Print the path of the project's uv (pinned in pyproject.toml's [tool.uv]
# required-version), installing it into .tools/uv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^required-version = "==\(.*\)"$/\1/p' pyproject.toml)
[ -n "$version" ] || { echo "uv.sh: no required-version in pyproject.toml" >&2; exit 1; }
if [ ! -x .tools/uv/bin/uv ] || [ "$(.tools/uv/bin/uv --version | cut -d' ' -f2)" != "$version" ]; then
  echo "uv.sh: installing uv $version into .tools/uv" >&2
  python3 -m venv .tools/uv
  .tools/uv/bin/pip install --quiet --disable-pip-version-check "uv==$version"
fi
echo "$PWD/.tools/uv/bin/uv"
