#!/bin/sh
# Write the broker's ACL file: one Redis user per role, `default` off.
#
#   acl.sh SECRETS_DIR OUT_FILE
#
# Reads SECRETS_DIR/redis_<user>_password for each user below and writes OUT_FILE
# (mode 0600) with SHA-256 hashes of the passwords, never the passwords themselves.
# The broker runs it at start into its tmpfs (`aclfile`), so no password is on a
# command line or in the image; the integration tier runs it for its redis-server.
#
# What each user may do (docs/security.md explains the limits):
#   orchestrator  its task records, checkpoints, events, budgets, subtask hand-off
#                 keys (agentmesh:*), and publishing to the research and code queues;
#                 INFO too (the API watches Redis's memory against maxmemory)
#   researcher    consuming the research queue; the subtask hand-off keys, the budget,
#                 events and cancel flag of a task (no task record or checkpoint), and
#                 waking the task's planning step (agentmesh:plan:due, :doorbell)
#   coder         the same on the code queue
#   flower        Celery's control and event channels, reading the queues' lengths
#   health        PING only (the broker's healthcheck)
#   gateway       its usage counters (agentmesh:gateway:*): HINCRBY, HGETALL, EXPIRE
# Each worker role keeps its reserved messages under its own queue's name
# (`unacked:<queue>`, `unacked_index:<queue>`, `unacked_mutex:<queue>`: see
# celery_app.py). Celery's Redis transport shares a few keys between every user
# (`_kombu.binding*`, the pidbox queues) and uses pub/sub channels named by
# exchange, so those stay open to the Celery users. No user gets @dangerous or @admin commands
# (FLUSHALL, CONFIG, KEYS, MONITOR, DEBUG, SHUTDOWN, ACL, CLIENT KILL, ...), SCAN,
# SCRIPT FLUSH/KILL or FUNCTION.
set -eu
dir=$1
out=$2
umask 077

hash_of() { # the SHA-256 (hex) of a secret file's first line
	f="$dir/redis_$1_password"
	if [ ! -s "$f" ]; then
		echo "acl.sh: $f is missing or empty: run scripts/secrets.sh (make up does)" >&2
		exit 1
	fi
	head -n 1 "$f" | tr -d '\r\n' | sha256sum | cut -d' ' -f1
}

celery='-@all +time +@connection +@transaction +@pubsub +@read +@write +@list +@hash +@set +@sortedset +@stream +@string +@keyspace +@scripting -@dangerous -@admin -scan -script|flush -script|kill -function'
kombu='~_kombu.binding* ~*.celery.pidbox* allchannels'
worker_keys='~agentmesh:subtask:* %R~agentmesh:task:*:cancel ~agentmesh:task:*:budget ~agentmesh:task:*:events ~agentmesh:task:*:awaited ~agentmesh:deadletter ~agentmesh:deadletter:total ~agentmesh:workers ~agentmesh:plan:due ~agentmesh:plan:doorbell'

{
	# `default` is off: no connection can log in as it, and an unauthenticated one
	# can run nothing (NOAUTH). Its permissions still matter to one reader: Redis 7.0
	# replays a MULTI/EXEC block from the AOF under the default user's rules, and
	# drops the block if they deny it (found by restarting a broker mid-batch: the
	# planner's transactions were lost). So the disabled user keeps every permission.
	echo "user default off nopass ~* &* +@all"
	echo "user orchestrator on #$(hash_of orchestrator) resetkeys ~agentmesh:* ~research* ~code* ~_kombu.binding* allchannels $celery +info"
	echo "user researcher on #$(hash_of researcher) resetkeys ~research* ~unacked*:research $kombu $worker_keys $celery"
	echo "user coder on #$(hash_of coder) resetkeys ~code* ~unacked*:code $kombu $worker_keys $celery"
	echo "user flower on #$(hash_of flower) resetkeys %R~research* %R~code* ~celeryev* $kombu $celery"
	echo "user health on #$(hash_of health) resetkeys resetchannels -@all +ping"
	echo "user gateway on #$(hash_of gateway) resetkeys resetchannels ~agentmesh:gateway:* -@all +ping +hello +auth +select +hincrby +hgetall +expire"
} >"$out.tmp"
mv "$out.tmp" "$out"
