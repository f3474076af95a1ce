#!/usr/bin/env bash
# Create what is missing under secrets/ (never committed):
#   anthropic_api_key   empty unless you put a key in it (or ANTHROPIC_API_KEY is set
#                       when this runs); empty means "model not configured"
#   gateway_token_<service>     each service's credential for the model gateway
#   egress_password_<user>      the egress proxy's users (gateway, researcher, mcp-fetch)
#   api_token           the orchestrator API's bearer token (the CLI reads it)
#   chroma_token        the bearer token of the memory service's authenticating front
#   flower_basic_auth   user:password of the Flower dashboard (user "admin")
#   redis_<user>_password   one password per Redis ACL user (docker/broker/acl.sh):
#                       orchestrator, researcher, coder, flower, health, gateway
# The folder is 0700; the files are 0644 so the containers' non-root users can read
# the bind-mounted secrets (Compose file secrets keep the host file's mode).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p secrets
chmod 0700 secrets
if [ ! -e secrets/anthropic_api_key ]; then
  printf '%s' "${ANTHROPIC_API_KEY:-}" > secrets/anthropic_api_key
  if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    echo "secrets: stored ANTHROPIC_API_KEY in secrets/anthropic_api_key" >&2
  else
    echo "secrets: secrets/anthropic_api_key is empty: put your Anthropic key there for the real model (make demo needs none)" >&2
  fi
fi
chmod 0644 secrets/anthropic_api_key
random_secret() { # NAME [PREFIX]: a random value, created once
  if [ ! -s "secrets/$1" ]; then
    python3 -c 'import secrets, sys; print(sys.argv[1] + secrets.token_urlsafe(32))' "${2:-}" > "secrets/$1"
    echo "secrets: created a random secrets/$1" >&2
  fi
  chmod 0644 "secrets/$1"
}
random_secret api_token
random_secret chroma_token
random_secret flower_basic_auth admin:
for user in orchestrator researcher coder flower health gateway; do
  random_secret "redis_${user}_password"
done
for name in gateway_token_orchestrator gateway_token_researcher gateway_token_coder \
  egress_password_gateway egress_password_researcher egress_password_mcp-fetch; do
  random_secret "$name"
done
