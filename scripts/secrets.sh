#!/usr/bin/env bash
# Create what is missing under secrets/ (never committed):
#   redis_password      a random password for the broker
#   anthropic_api_key   empty unless you put a key in it (or ANTHROPIC_API_KEY is set
#                       when this runs); empty means "model not configured"
# The folder is 0700; the files are 0644 so the containers' non-root users can read
# the bind-mounted secrets (Compose file secrets keep the host file's mode).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p secrets
chmod 0700 secrets
if [ ! -s secrets/redis_password ]; then
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > secrets/redis_password
  echo "secrets: created a random secrets/redis_password" >&2
fi
if [ ! -e secrets/anthropic_api_key ]; then
  printf '%s' "${ANTHROPIC_API_KEY:-}" > secrets/anthropic_api_key
  if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    echo "secrets: stored ANTHROPIC_API_KEY in secrets/anthropic_api_key" >&2
  else
    echo "secrets: secrets/anthropic_api_key is empty: put your Anthropic key there for the real model (make demo needs none)" >&2
  fi
fi
chmod 0644 secrets/redis_password secrets/anthropic_api_key
