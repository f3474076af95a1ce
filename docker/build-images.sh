#!/usr/bin/env bash
# Build every image the mesh runs, with or without an image registry.
#
#   docker/build-images.sh        decide the image source, build, write build/images.env
#
# Image source (AGENTMESH_IMAGE_SOURCE=official|offline overrides the decision):
#   official  `docker pull python:3.12-slim` works: the official Python base and the
#             official Redis, Chroma and OpenTelemetry Collector images are pulled.
#   offline   no registry: a Debian bookworm root filesystem, built with mmdebstrap
#             from the host's apt mirror, is imported as agentmesh/python-base:bookworm,
#             and Redis, Chroma and the collector are stand-ins built on it
#             (agentmesh/{redis,chroma,otel-collector}:offline). The service images
#             are built in it but run on agentmesh/python-runtime:bookworm, the same
#             root filesystem cut to what a running Python service needs
#             (docker/python-runtime/trim-rootfs.py).
# The MCP sidecars' image (agentmesh/mcp: the reference MCP servers behind mcp-proxy)
# is built on the same Python base either way.
# Either way the orchestrator, researcher and coder images come from the same
# Dockerfiles, with every wheel downloaded on the host into build/wheelhouse/ first:
# build containers never need an index or a mirror.
#
# Idempotent and cached: an existing base image is kept, wheels and Debian packages
# are downloaded again only when their pins change, Docker's layer cache does the
# rest (a one-line code change rebuilds the three service images in seconds).
#
# Writes build/images.env (image names for compose and the Makefile).
#
# Environment (all optional):
#   AGENTMESH_IMAGE_SOURCE     official | offline (default: decided by a test pull)
#   AGENTMESH_PULL_TIMEOUT     seconds allowed for that test pull (default 120)
#   AGENTMESH_IMAGE_TAG        tag of the agentmesh service images (default latest; the
#                              offline stand-ins are then tagged offline-<tag>, the
#                              offline base and runtime bookworm-<tag>)
#   AGENTMESH_BUILD_NO_CACHE   1: build every layer anew (docker build --no-cache), e.g.
#                              when the smoke test finds a cached layer missing files
#   AGENTMESH_DEBIAN_MIRROR    Debian mirror for the offline base (default: the host's)
#   AGENTMESH_DEBIAN_SECURITY  Debian security mirror (default: the host's)
#   OFFICIAL_PYTHON_IMAGE, OFFICIAL_REDIS_IMAGE, OFFICIAL_CHROMA_IMAGE,
#   OFFICIAL_COLLECTOR_IMAGE   the official images (defaults below)
#   OFFICIAL_EGRESS_BASE_IMAGE the base of the egress proxy (Debian's squid) with a registry
set -euo pipefail
cd "$(dirname "$0")/.."

OFFICIAL_PYTHON_IMAGE=${OFFICIAL_PYTHON_IMAGE:-python:3.12-slim}
OFFICIAL_REDIS_IMAGE=${OFFICIAL_REDIS_IMAGE:-redis:7.4-bookworm}
OFFICIAL_COLLECTOR_IMAGE=${OFFICIAL_COLLECTOR_IMAGE:-otel/opentelemetry-collector-contrib:0.150.0}
# The egress proxy is Debian's squid in both modes; this is its base where a registry is.
OFFICIAL_EGRESS_BASE_IMAGE=${OFFICIAL_EGRESS_BASE_IMAGE:-debian:bookworm-slim}
DEBIAN_SUITE=bookworm
# The same path inside the base image, so apt there (and on the host, reading the
# base's sources for the stand-ins' packages) checks the same keys.
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BASE_PACKAGES=python3,python3-venv,ca-certificates,netbase,usr-is-merged
IMAGE_TAG=${AGENTMESH_IMAGE_TAG:-latest}
# The offline stand-ins follow a non-default tag too, so two checkouts building side
# by side (AGENTMESH_IMAGE_TAG=a, =b) never replace each other's images.
STANDIN_TAG=offline
[ "$IMAGE_TAG" = latest ] || STANDIN_TAG=offline-$IMAGE_TAG
# The offline base and runtime follow it as well (agentmesh/python-base:bookworm-<tag>).
BASE_IMAGE=agentmesh/python-base:bookworm
RUNTIME_BASE_IMAGE=agentmesh/python-runtime:bookworm
if [ "$IMAGE_TAG" != latest ]; then
	BASE_IMAGE=$BASE_IMAGE-$IMAGE_TAG
	RUNTIME_BASE_IMAGE=$RUNTIME_BASE_IMAGE-$IMAGE_TAG
fi
SERVICES=(orchestrator researcher coder)
declare -A SERVICE_DIR=([orchestrator]=orchestrator [researcher]=agents/researcher [coder]=agents/coder)
declare -A SERVICE_SCRIPTS=(
	[orchestrator]="orchestrator agentmesh-scripted-llm"
	[researcher]="researcher-worker"
	[coder]="coder-worker sandbox-server"
)

BUILD=build
WHEELHOUSE=$BUILD/wheelhouse
LOGS=$BUILD/logs
started=$(date +%s)

log() { printf 'build-images: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
lock_version() { # the version of a package in uv.lock
	awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/[^0-9A-Za-z.]/, "", $0); sub(/^version/, "", $0); print; exit }' uv.lock
}

# docker build with its output in build/logs/<name>.log, shown when it fails. The image
# the tag pointed to before is removed when nothing uses it, so rebuilds leave no
# untagged images behind (intermediate stages stay: they are the layer cache).
docker_build() {
	local name=$1 tag=$2
	shift 2
	local began=$SECONDS previous
	previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
	mkdir -p "$LOGS"
	local no_cache=()
	[ "${AGENTMESH_BUILD_NO_CACHE:-0}" = 1 ] && no_cache=(--no-cache)
	if ! docker build "${no_cache[@]}" --tag "$tag" "$@" >"$LOGS/$name.log" 2>&1; then
		tail -n 40 "$LOGS/$name.log" >&2
		die "building $name failed (full log: $LOGS/$name.log)"
	fi
	if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
		docker rmi "$previous" >/dev/null 2>&1 || true
	fi
	log "built $tag in $((SECONDS - began)) s"
}

choose_source() {
	case "${AGENTMESH_IMAGE_SOURCE:-}" in
	official | offline)
		SOURCE=$AGENTMESH_IMAGE_SOURCE
		REASON="AGENTMESH_IMAGE_SOURCE=$SOURCE"
		;;
	"")
		if timeout "${AGENTMESH_PULL_TIMEOUT:-120}" docker pull --quiet "$OFFICIAL_PYTHON_IMAGE" >/dev/null 2>&1; then
			SOURCE=official
			REASON="docker pull $OFFICIAL_PYTHON_IMAGE succeeded"
		else
			SOURCE=offline
			REASON="docker pull $OFFICIAL_PYTHON_IMAGE failed: no registry reachable"
		fi
		;;
	*) die "AGENTMESH_IMAGE_SOURCE must be official or offline, not '$AGENTMESH_IMAGE_SOURCE'" ;;
	esac
	if [ "$SOURCE" = official ]; then
		echo "images: official ($REASON): pulling the official base and infrastructure images"
	else
		echo "images: offline ($REASON): base from Debian packages, stand-ins for Redis, Chroma and the collector"
	fi
}

ensure_uv() {
	UV=$(scripts/uv.sh)
}

# docker/wheelhouse.py, in an environment that has pip whatever the host's Python lacks.
wheelhouse() {
	"$UV" run --quiet --no-project --with pip --with packaging python docker/wheelhouse.py "$@"
}

# The first URI of the host's apt sources that matches a pattern.
host_mirror() {
	local pattern=$1 fallback=$2 uri
	uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i } /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' |
		grep -E "$pattern" | head -n 1 || true)
	echo "${uri:-$fallback}"
}

# agentmesh/python-base:bookworm: Debian minbase + Python, imported as an image.
build_base_image() {
	if image_exists "$BASE_IMAGE"; then
		log "base image $BASE_IMAGE exists: kept (docker rmi it to rebuild)"
		return
	fi
	if ! command -v mmdebstrap >/dev/null 2>&1; then
		[ "$(id -u)" = 0 ] || die "mmdebstrap is missing: sudo apt-get install mmdebstrap"
		log "installing mmdebstrap with apt"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
	fi
	[ "$(id -u)" = 0 ] || die "building the base root filesystem needs root (mmdebstrap)"
	[ -f "$DEBIAN_KEYRING" ] || die "$DEBIAN_KEYRING is missing: apt-get install debian-archive-keyring"
	local mirror security began=$SECONDS
	mirror=${AGENTMESH_DEBIAN_MIRROR:-$(host_mirror '/debian/?$' http://deb.debian.org/debian)}
	security=${AGENTMESH_DEBIAN_SECURITY:-$(host_mirror '/debian-security/?$' http://deb.debian.org/debian-security)}
	log "building $BASE_IMAGE from $mirror (mmdebstrap, about a minute)"
	mkdir -p "$BUILD/base" "$LOGS"
	rm -f "$BUILD/base/rootfs.tar"
	# shellcheck disable=SC2016 # "$1" is the hook's argument, expanded by mmdebstrap
	if ! mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
		--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
		--aptopt='Acquire::Languages "none"' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-include=/usr/share/locale/locale.alias' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/lintian/*' \
		--customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/apt/eipp.log.xz' \
		"$DEBIAN_SUITE" "$BUILD/base/rootfs.tar" \
		"deb [signed-by=$DEBIAN_KEYRING] $mirror $DEBIAN_SUITE main" \
		"deb [signed-by=$DEBIAN_KEYRING] $mirror $DEBIAN_SUITE-updates main" \
		"deb [signed-by=$DEBIAN_KEYRING] $security $DEBIAN_SUITE-security main" \
		>"$LOGS/python-base.log" 2>&1; then
		tail -n 40 "$LOGS/python-base.log" >&2
		die "mmdebstrap failed (full log: $LOGS/python-base.log)"
	fi
	docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["python3"]' \
		--change 'LABEL org.opencontainers.image.title="agentmesh-python-base" org.opencontainers.image.description="Debian bookworm minbase with python3 and python3-venv"' \
		"$BUILD/base/rootfs.tar" "$BASE_IMAGE" >/dev/null
	rm -f "$BUILD/base/rootfs.tar"
	log "built $BASE_IMAGE in $((SECONDS - began)) s"
}

# agentmesh/python-runtime:bookworm: the base's root filesystem without what only
# installs, builds or administers (apt, dpkg, perl, shells, coreutils, ...), for the
# service images to run on. Rebuilt when the base or the trimming script changes.
build_runtime_image() {
	local inputs previous began=$SECONDS
	inputs="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE") $(sha256sum docker/python-runtime/trim-rootfs.py | cut -d' ' -f1)"
	previous=$(docker image inspect --format '{{.Id}}' "$RUNTIME_BASE_IMAGE" 2>/dev/null || true)
	if [ -n "$previous" ] && [ "$(docker image inspect --format '{{index .Config.Labels "agentmesh.runtime.inputs"}}' "$RUNTIME_BASE_IMAGE")" = "$inputs" ]; then
		log "runtime image $RUNTIME_BASE_IMAGE is current: kept"
		return
	fi
	mkdir -p "$BUILD/base" "$LOGS"
	if ! docker run --rm -i --network none "$BASE_IMAGE" python3 - <docker/python-runtime/trim-rootfs.py \
		>"$BUILD/base/runtime.tar" 2>"$LOGS/python-runtime.log"; then
		cat "$LOGS/python-runtime.log" >&2
		die "trimming $BASE_IMAGE into $RUNTIME_BASE_IMAGE failed"
	fi
	docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["python3"]' \
		--change "LABEL org.opencontainers.image.title=\"agentmesh-python-runtime\" org.opencontainers.image.description=\"The packages of $BASE_IMAGE a running Python service needs: no shell, no package manager\" agentmesh.runtime.inputs=\"$inputs\"" \
		"$BUILD/base/runtime.tar" "$RUNTIME_BASE_IMAGE" >/dev/null
	rm -f "$BUILD/base/runtime.tar"
	if [ -n "$previous" ]; then
		docker rmi "$previous" >/dev/null 2>&1 || true
	fi
	log "built $RUNTIME_BASE_IMAGE in $((SECONDS - began)) s ($(sed -n 's/^trim-rootfs: kept \([0-9]*\) packages.*/\1/p' "$LOGS/python-runtime.log") packages kept)"
}

# The wheel tag and marker environment of the image's interpreter.
probe_python() {
	local image=$1 env_json
	env_json=$(docker run --rm -i --network none "$image" python3 - <docker/target-env.py) ||
		die "cannot run python3 in $image"
	PYTHON_TAG=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["python_tag"])' "$env_json")
	mkdir -p "$WHEELHOUSE/$PYTHON_TAG"
	printf '%s\n' "$env_json" >"$WHEELHOUSE/$PYTHON_TAG/target.json"
	TARGET_JSON=$WHEELHOUSE/$PYTHON_TAG/target.json
	log "$image runs CPython $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["markers"]["python_full_version"])' "$env_json") ($PYTHON_TAG)"
}

# build/wheelhouse/<tag>/{shared,orchestrator,researcher,coder}/ and tools/.
fill_wheelhouse() {
	local exports=$BUILD/exports members=$BUILD/members member service
	mkdir -p "$exports" "$members"
	for member in shared "${SERVICES[@]}"; do
		"$UV" export --quiet --frozen --no-dev --no-emit-workspace --no-header --no-annotate \
			--package "agentmesh-$member" --output-file "$exports/$member.txt"
	done
	rm -f "$members"/*.whl
	for member in shared "${SERVICES[@]}"; do
		"$UV" build --quiet --wheel --package "agentmesh-$member" --out-dir "$members" 2>"$LOGS/uv-build.log" ||
			{
				cat "$LOGS/uv-build.log" >&2
				die "uv build of agentmesh-$member failed"
			}
	done
	wheelhouse --target "$TARGET_JSON" --requirements docker/build-tools.txt \
		--dest "$WHEELHOUSE/tools"
	wheelhouse --target "$TARGET_JSON" --requirements "$exports/shared.txt" \
		--dest "$WHEELHOUSE/$PYTHON_TAG/shared"
	for service in "${SERVICES[@]}"; do
		wheelhouse --target "$TARGET_JSON" --requirements "$exports/$service.txt" \
			--exclude "$exports/shared.txt" \
			--local-wheel "$(echo "$members"/agentmesh_shared-*.whl)" \
			--local-wheel "$(echo "$members"/agentmesh_"$service"-*.whl)" \
			--dest "$WHEELHOUSE/$PYTHON_TAG/$service"
	done
}

# The three Dockerfiles must agree byte for byte up to the end of the shared layers,
# or the images stop sharing them (and the shared dependencies are stored three times).
check_shared_layers() {
	local reference="" service block
	for service in "${SERVICES[@]}"; do
		block=$(sed -n '/^# ---- shared layers: begin ----$/,/^# ---- end of the shared layers ----$/p' \
			"${SERVICE_DIR[$service]}/Dockerfile")
		[ -n "$block" ] || die "${SERVICE_DIR[$service]}/Dockerfile has no shared-layers block"
		if [ -z "$reference" ]; then
			reference=$block
		elif [ "$block" != "$reference" ]; then
			die "the shared-layers block of ${SERVICE_DIR[$service]}/Dockerfile differs from orchestrator/Dockerfile"
		fi
	done
}

build_service_images() {
	local service revision
	revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	# One at a time: the second and third builds reuse the first one's shared layers.
	for service in "${SERVICES[@]}"; do
		docker_build "$service" "agentmesh/$service:$IMAGE_TAG" \
			--file "${SERVICE_DIR[$service]}/Dockerfile" \
			--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
			--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
			--build-arg "PYTHON_TAG=$PYTHON_TAG" \
			--build-arg "VERSION=$(lock_version "agentmesh-$service")" \
			--build-arg "REVISION=$revision" .
	done
}

# Each service image imports every module of its packages (so everything they import
# at run time: the mcp client with the SDK's server side, Celery's threads pool, the
# OpenTelemetry exporters, ...) and has its console scripts, as uid 10001, with no
# network and a read-only root. What the runtime image must still provide is checked
# too: every extension module of the standard library loads (the libraries they link
# are there), TLS finds the CA bundle, and a thread starts python -I (as the
# sandbox does). The orchestrator's (where the memory service runs) loads the
# embedding model.
smoke_test_service_images() {
	local service packages rc
	for service in "${SERVICES[@]}"; do
		packages="agentmesh_shared agentmesh_$service"
		rc=0
		docker run --rm --network none --read-only --cap-drop ALL \
			--security-opt no-new-privileges "agentmesh/$service:$IMAGE_TAG" python -c "
import glob, importlib, importlib.metadata, importlib.util, os, pkgutil, shutil, ssl, subprocess, sys, threading
# First, every module each installed distribution recorded is there (test suites are
# pruned: numpy's tests/, onnx's backend/test/). On this machine's storage driver (fuse-overlayfs) a COPY of the venv now
# and then comes out a file short, from a fresh build as well as a cached one (the
# driver lists a directory of 1,028 entries short; see tests/e2e/conftest.py); that
# exits 3, and the images are built once more without the cache (main below).
lost = [d.metadata['Name'] + ': ' + str(f) for d in importlib.metadata.distributions()
        for f in (d.files or ()) if f.suffix == '.py' and not {'tests', 'test'} & set(f.parts) and not f.locate().exists()]
if lost:
    print(f'{len(lost)} installed files are missing, e.g. {lost[:3]}', file=sys.stderr)
    sys.exit(3)
for package in '$packages'.split():
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):
        importlib.import_module(module.name)
dynload = os.path.dirname(importlib.util.find_spec('_ssl').origin)
for path in glob.glob(dynload + '/*.so'):
    importlib.import_module(os.path.basename(path).split('.')[0])
if not ssl.create_default_context().cert_store_stats()['x509_ca']:
    sys.exit('TLS finds no CA certificates')
ran = []
thread = threading.Thread(target=lambda: ran.append(subprocess.run(
    [sys.executable, '-I', '-c', 'print(6 * 7)'], capture_output=True, text=True, check=True).stdout))
thread.start()
thread.join()
if ran != ['42\\n']:
    sys.exit(f'python -I from a thread printed {ran}')
import anthropic  # the SDK every service calls the model with, imported whole
if '$service' == 'orchestrator':
    from agentmesh_orchestrator.embedding import get_embedder
    get_embedder().embed(['the embedding model loads as the service user'])
missing = [s for s in '${SERVICE_SCRIPTS[$service]}'.split() if not shutil.which(s)]
if missing or os.getuid() != 10001:
    sys.exit(f'missing console scripts {missing} or uid {os.getuid()} is not 10001')
" || rc=$?
		[ "$rc" = 0 ] || { [ "$rc" = 3 ] && return 3; } || die "agentmesh/$service:$IMAGE_TAG failed its smoke test"
	done
	log "service images import their packages and have their console scripts"
}

# Debian packages for a stand-in, resolved by apt on the host against the base
# image's own dpkg status (so only what the base lacks), from the base's own sources.
fetch_debs() {
	local dest=$1
	shift
	local apt_dir=$BUILD/apt stamp base_id
	base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")
	stamp=$(printf '%s %s\n' "$base_id" "$*" | sha256sum | cut -d' ' -f1)
	if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
		return
	fi
	rm -rf "$apt_dir" "$dest"
	mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" "$apt_dir/state/lists/partial" \
		"$apt_dir/cache/archives/partial" "$dest/partial"
	docker run --rm --network none "$BASE_IMAGE" cat /var/lib/dpkg/status >"$apt_dir/status"
	docker run --rm --network none "$BASE_IMAGE" cat /etc/apt/sources.list >"$apt_dir/etc/sources.list"
	local apt_options=(
		-o "Dir::Etc::SourceList=$PWD/$apt_dir/etc/sources.list"
		-o "Dir::Etc::SourceParts=$PWD/$apt_dir/etc/sources.list.d"
		-o "Dir::Etc::Preferences=$PWD/$apt_dir/etc/preferences"
		-o "Dir::Etc::PreferencesParts=$PWD/$apt_dir/etc/preferences.d"
		-o "Dir::State=$PWD/$apt_dir/state"
		-o "Dir::State::status=$PWD/$apt_dir/status"
		-o "Dir::Cache=$PWD/$apt_dir/cache"
		-o "Dir::Cache::archives=$PWD/$dest"
		-o "Acquire::Languages=none"
		-o "APT::Install-Recommends=false"
		-o "Debug::NoLocking=true"
	)
	apt-get "${apt_options[@]}" -qq update >"$LOGS/apt.log" 2>&1 ||
		{
			cat "$LOGS/apt.log" >&2
			die "apt-get update for the stand-in packages failed"
		}
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" -qq --download-only -y install "$@" \
		>>"$LOGS/apt.log" 2>&1 ||
		{
			cat "$LOGS/apt.log" >&2
			die "downloading $* failed"
		}
	rm -rf "$dest/partial" "$dest/lock"
	echo "$stamp" >"$dest/.stamp"
	log "downloaded $(find "$dest" -name '*.deb' | wc -l) Debian packages for $*"
}

# A build context for a stand-in: its docker/<name>/ files plus prepared inputs.
stand_in_context() {
	local name=$1 context=$BUILD/context/$1
	rm -rf "$context"
	mkdir -p "$context"
	cp -a "docker/$name/." "$context/"
	echo "$context"
}

deb_version() { # the version of a package among downloaded .debs
	find "$2" -name "$1_*.deb" | head -n 1 | sed -E 's/.*_([^_]+)_[^_]+\.deb$/\1/; s/%3a/:/'
}

build_offline_infra() {
	local context chroma_version rotel_version
	[ "$PYTHON_TAG" = cp311 ] || die "the offline stand-ins expect Python 3.11 in $BASE_IMAGE"

	fetch_debs "$BUILD/offline/debs/redis" redis-server
	context=$(stand_in_context redis)
	cp -al "$BUILD/offline/debs/redis" "$context/debs"
	docker_build redis-offline agentmesh/redis:$STANDIN_TAG --build-arg "BASE_IMAGE=$BASE_IMAGE" \
		--build-arg "REDIS_VERSION=$(deb_version redis-server "$context/debs")" "$context"

	chroma_version=$(lock_version chromadb-client)
	grep -qx "chromadb==$chroma_version" docker/chroma/requirements.in ||
		die "docker/chroma/requirements.in must pin chromadb==$chroma_version (chromadb-client in uv.lock); regenerate docker/chroma/requirements.txt"
	wheelhouse --target "$TARGET_JSON" --requirements docker/chroma/requirements.txt \
		--dest "$BUILD/offline/$PYTHON_TAG/chroma"
	context=$(stand_in_context chroma)
	cp -al "$BUILD/offline/$PYTHON_TAG/chroma" "$context/wheels"
	cp -al "$WHEELHOUSE/tools" "$context/tools"
	docker_build chroma-offline agentmesh/chroma:$STANDIN_TAG --build-arg "BASE_IMAGE=$BASE_IMAGE" \
		--build-arg "CHROMA_VERSION=$chroma_version" "$context"

	fetch_debs "$BUILD/offline/debs/otel-collector" libpython3.11
	wheelhouse --target "$TARGET_JSON" --requirements docker/otel-collector/requirements.txt \
		--dest "$BUILD/offline/$PYTHON_TAG/rotel"
	rotel_version=$(sed -n 's/^rotel==\([^ ]*\).*/\1/p' "$BUILD/offline/$PYTHON_TAG/rotel/requirements.txt")
	context=$(stand_in_context otel-collector)
	cp -al "$BUILD/offline/$PYTHON_TAG/rotel" "$context/wheels"
	cp -al "$BUILD/offline/debs/otel-collector" "$context/debs"
	docker_build otel-collector-offline agentmesh/otel-collector:$STANDIN_TAG \
		--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "ROTEL_VERSION=$rotel_version" "$context"

	if ! { docker run --rm agentmesh/redis:$STANDIN_TAG redis-server --version >/dev/null &&
		docker run --rm --entrypoint /opt/chroma/bin/python agentmesh/chroma:$STANDIN_TAG -c 'import chromadb_rust_bindings' &&
		docker run --rm agentmesh/otel-collector:$STANDIN_TAG version >/dev/null; }; then
		die "a stand-in image failed its smoke test"
	fi
	REDIS_IMAGE=agentmesh/redis:$STANDIN_TAG
	CHROMA_IMAGE=agentmesh/chroma:$STANDIN_TAG
	COLLECTOR_IMAGE=agentmesh/otel-collector:$STANDIN_TAG
	COLLECTOR_FLAVOR=rotel
}

pull_official_infra() {
	REDIS_IMAGE=$OFFICIAL_REDIS_IMAGE
	CHROMA_IMAGE=${OFFICIAL_CHROMA_IMAGE:-chromadb/chroma:$(lock_version chromadb-client)}
	COLLECTOR_IMAGE=$OFFICIAL_COLLECTOR_IMAGE
	COLLECTOR_FLAVOR=contrib
	local image
	for image in "$OFFICIAL_PYTHON_IMAGE" "$REDIS_IMAGE" "$CHROMA_IMAGE" "$COLLECTOR_IMAGE"; do
		docker pull --quiet "$image" >/dev/null || die "docker pull $image failed"
	done
	log "pulled $OFFICIAL_PYTHON_IMAGE $REDIS_IMAGE $CHROMA_IMAGE $COLLECTOR_IMAGE"
}

# agentmesh/egress: Debian's squid, from downloaded .debs offline, from apt on the
# official Debian image otherwise (the same package either way).
build_egress_image() {
	local context base version=unknown
	context=$(stand_in_context egress)
	if [ "$SOURCE" = offline ]; then
		fetch_debs "$BUILD/offline/debs/egress" squid openssl
		cp -al "$BUILD/offline/debs/egress/." "$context/debs/"
		base=$BASE_IMAGE
		version=$(deb_version squid "$context/debs")
	else
		docker pull --quiet "$OFFICIAL_EGRESS_BASE_IMAGE" >/dev/null || die "docker pull $OFFICIAL_EGRESS_BASE_IMAGE failed"
		base=$OFFICIAL_EGRESS_BASE_IMAGE
	fi
	docker_build egress "agentmesh/egress:$IMAGE_TAG" --build-arg "BASE_IMAGE=$base" \
		--build-arg "SQUID_VERSION=$version" "$context"
	docker run --rm --network none --entrypoint squid "agentmesh/egress:$IMAGE_TAG" -v >/dev/null ||
		die "agentmesh/egress:$IMAGE_TAG failed its smoke test"
	EGRESS_IMAGE=agentmesh/egress:$IMAGE_TAG
}

# agentmesh/mcp: the reference MCP servers behind mcp-proxy (the mcp-* sidecars), on
# the same Python base as the service images; git from Debian (downloaded .debs offline).
build_mcp_image() {
	local context set
	context=$(stand_in_context mcp)
	mkdir -p "$context/wheels" "$context/debs"
	for set in servers proxy; do
		wheelhouse --target "$TARGET_JSON" --requirements "docker/mcp/$set.txt" \
			--dest "$WHEELHOUSE/$PYTHON_TAG/mcp-$set"
		cp -al "$WHEELHOUSE/$PYTHON_TAG/mcp-$set" "$context/wheels/$set"
	done
	cp -al "$WHEELHOUSE/tools" "$context/wheels/tools"
	if [ "$SOURCE" = offline ]; then
		fetch_debs "$BUILD/offline/debs/mcp" git
		cp -al "$BUILD/offline/debs/mcp/." "$context/debs/"
	fi
	docker_build mcp "agentmesh/mcp:$IMAGE_TAG" --build-arg "BASE_IMAGE=$PYTHON_IMAGE" \
		--build-arg "VERSION=$(sed -n 's/^mcp-proxy==\([^ ]*\).*/\1/p' docker/mcp/proxy.txt)" "$context"
	docker run --rm --network none --read-only --cap-drop ALL --entrypoint sh "agentmesh/mcp:$IMAGE_TAG" -c \
		'mcp-proxy --version >/dev/null && test -x /opt/mcp-servers/bin/mcp-server-fetch && test -x /opt/mcp-servers/bin/mcp-server-git && test -x /opt/mcp-servers/bin/mcp-server-time && git --version >/dev/null && test "$(id -u)" = 10001' ||
		die "agentmesh/mcp:$IMAGE_TAG failed its smoke test"
	MCP_IMAGE=agentmesh/mcp:$IMAGE_TAG
}

write_images_env() {
	local env_file=$BUILD/images.env
	cat >"$env_file.tmp" <<EOF
# The images of this machine's mesh, written by docker/build-images.sh: do not edit.
AGENTMESH_IMAGE_SOURCE=$SOURCE
PYTHON_IMAGE=$PYTHON_IMAGE
RUNTIME_IMAGE=$RUNTIME_IMAGE
ORCHESTRATOR_IMAGE=agentmesh/orchestrator:$IMAGE_TAG
RESEARCHER_IMAGE=agentmesh/researcher:$IMAGE_TAG
CODER_IMAGE=agentmesh/coder:$IMAGE_TAG
REDIS_IMAGE=$REDIS_IMAGE
CHROMA_IMAGE=$CHROMA_IMAGE
COLLECTOR_IMAGE=$COLLECTOR_IMAGE
COLLECTOR_FLAVOR=$COLLECTOR_FLAVOR
EGRESS_IMAGE=$EGRESS_IMAGE
MCP_IMAGE=$MCP_IMAGE
EOF
	mv "$env_file.tmp" "$env_file"
	log "wrote $env_file"
}

main() {
	command -v docker >/dev/null 2>&1 || die "docker is not installed"
	docker info >/dev/null 2>&1 || die "the Docker engine is not reachable"
	mkdir -p "$LOGS"
	choose_source
	ensure_uv
	if [ "$SOURCE" = official ]; then
		pull_official_infra
		PYTHON_IMAGE=$OFFICIAL_PYTHON_IMAGE
		RUNTIME_IMAGE=$OFFICIAL_PYTHON_IMAGE
	else
		build_base_image
		build_runtime_image
		PYTHON_IMAGE=$BASE_IMAGE
		RUNTIME_IMAGE=$RUNTIME_BASE_IMAGE
	fi
	probe_python "$PYTHON_IMAGE"
	fill_wheelhouse
	check_shared_layers
	build_service_images
	if ! smoke_test_service_images; then
		log "a service image came out with installed files missing: building them again without the cache"
		AGENTMESH_BUILD_NO_CACHE=1 build_service_images
		smoke_test_service_images || die "the service images lost installed files twice (logs: $LOGS)"
	fi
	if [ "$SOURCE" = offline ]; then
		build_offline_infra
	fi
	build_egress_image
	build_mcp_image
	write_images_env
	log "done in $(($(date +%s) - started)) s"
}

main "$@"
