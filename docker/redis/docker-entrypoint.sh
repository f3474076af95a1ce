#!/bin/sh
# The official redis image's argument handling, so one compose `command:` fits both:
# options or a .conf file alone mean `redis-server ...`, and without a config file
# that sets protected-mode, protected mode is off (the container network is the
# boundary; the mesh sets a password).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
	if ! { [ -f "${2:-}" ] && grep -q '^protected-mode' "$2"; }; then
		set -- "$@" --protected-mode no
	fi
fi
exec "$@"
