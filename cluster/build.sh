#!/usr/bin/env bash
# Build the dtwz node image (cluster/Dockerfile) so that nothing inside the build
# reaches the network:
#
#   1. the base image: --base IMAGE if given; else python:3.11-slim if the engine has
#      it; else dtwz-base:bookworm if the engine has it; else python:3.11-slim if it
#      can be pulled; else dtwz-base:bookworm, built here once (debootstrap of Debian
#      bookworm with python3 and python3-venv, then `docker import`; needs root);
#   2. a clean copy of the sources, hashed with the Dockerfile, this script and the
#      base image's ID: the image is tagged dtwz:src-<hash>, and when that image
#      exists already nothing is built (--force builds anyway);
#   3. wheels of dtwz and of every dependency, made on this host with pip for the
#      base image's Python, platform and C library;
#   4. `docker build --build-arg BASE=...` with the wheels as the whole context.
#
# Logs go to stderr; the last line on stdout is the image built (dtwz:src-<hash>),
# which is also tagged --tag (dtwz:latest unless told otherwise).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: cluster/build.sh [--base IMAGE | --local-base] [--tag TAG] [--force]

  --base IMAGE   base image with python3 (3.11+) and its venv module
                 (default: python:3.11-slim, or dtwz-base:bookworm where no
                 registry can be reached)
  --local-base   build and use dtwz-base:bookworm (debootstrap; needs root)
  --tag TAG      also tag the image TAG (default dtwz:latest; '' for none)
  --force        build even when the image for these sources exists

environment: PYTHON (a Python with pip for the wheels; default .venv/bin/python or
python3), DTWZ_DEBIAN_MIRROR (default http://deb.debian.org/debian)
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OFFICIAL_BASE=python:3.11-slim
LOCAL_BASE=dtwz-base:bookworm
MIRROR=${DTWZ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
base='' local_base=0 tag=dtwz:latest force=0
while (($#)); do
    case $1 in
        --base) base=${2:?--base needs an image}; shift 2 ;;
        --local-base) local_base=1; shift ;;
        --tag) tag=${2?--tag needs a value}; shift 2 ;;
        --force) force=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

# -- 1. the base image ------------------------------------------------------------------

build_local_base() {
    [[ $(id -u) == 0 ]] || die "debootstrap needs root: run as root, or give --base IMAGE"
    command -v debootstrap >/dev/null ||
        die "debootstrap is missing (Debian: apt-get install debootstrap)"
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/dtwz-rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this folder
    trap "rm -rf '$rootfs'" EXIT
    log "building $LOCAL_BASE: debootstrap bookworm from $MIRROR (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv \
        bookworm "$rootfs" "$MIRROR" >&2 ||
        die "debootstrap failed (see $rootfs/debootstrap/debootstrap.log)"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/debootstrap \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            --message "debootstrap bookworm + python3 (dtwz cluster/build.sh)" \
            - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "$LOCAL_BASE: $(docker run --rm "$LOCAL_BASE" python3 -V)"
}

if ((local_base)); then
    if ((force)) || ! have_image "$LOCAL_BASE"; then build_local_base; fi
    base=$LOCAL_BASE
elif [[ -z $base ]]; then
    if have_image "$OFFICIAL_BASE"; then
        base=$OFFICIAL_BASE
    elif have_image "$LOCAL_BASE"; then
        base=$LOCAL_BASE
    elif timeout 120 docker pull --quiet "$OFFICIAL_BASE" >&2; then
        base=$OFFICIAL_BASE
    else
        log "cannot pull $OFFICIAL_BASE: building the base locally instead"
        build_local_base
        base=$LOCAL_BASE
    fi
elif ! have_image "$base"; then
    docker pull --quiet "$base" >&2 || die "base image $base is neither here nor pullable"
fi
base_id=$(docker image inspect --format '{{.Id}}' "$base")
log "base image: $base ($base_id)"

# -- 2. the sources, their hash ---------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/dtwz-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/context/wheels"
# a copy, so the wheel holds exactly what was hashed (and no stale build/ leftovers)
(cd "$ROOT" && tar -c --exclude='__pycache__' --exclude='*.pyc' pyproject.toml README.md dtwz) |
    tar -C "$work/src" -x
hash=$(
    {
        (cd "$work/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        cat "$ROOT/cluster/Dockerfile" "$ROOT/cluster/build.sh" | sha256sum
        echo "$base_id"
    } | sha256sum | cut -c1-16
)
image=dtwz:src-$hash

if have_image "$image" && ((!force)); then
    log "$image exists (same sources and base): not rebuilding"
else
    # -- 3. wheels for the base image's Python --------------------------------------------
    read -r pyver arch libc < <(docker run --rm --entrypoint python3 "$base" -c \
        'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.machine(),
         platform.libc_ver()[1].replace(".", "_"))')
    [[ $libc ]] || die "$base has no glibc python3 (musl bases are not supported)"
    log "wheels for Python $pyver on manylinux_${libc}_$arch, made with $PYTHON"
    # pip takes --platform literally: name every manylinux tag this C library accepts
    platforms=()
    for ((minor = ${libc#*_}; minor >= 5; minor--)); do
        platforms+=(--platform "manylinux_${libc%%_*}_${minor}_$arch")
    done
    platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch"
        --platform "manylinux1_$arch")
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/context/wheels" "$work/src" >&2
    "$PYTHON" -m pip download --quiet --dest "$work/context/wheels" \
        --only-binary=:all: --implementation cp --python-version "$pyver" \
        --abi "cp${pyver/./}" "${platforms[@]}" \
        "$work"/context/wheels/dtwz-*.whl >&2

    # -- 4. the image ------------------------------------------------------------------
    log "docker build $image from $base"
    docker build --quiet --build-arg "BASE=$base" --label "org.dtwz.source-hash=$hash" \
        --label "org.dtwz.base=$base" --tag "$image" \
        --file "$ROOT/cluster/Dockerfile" "$work/context" >&2
    docker image prune --force --filter label=org.dtwz.stage=install >/dev/null
    # images of older sources: removed unless a container still uses them
    docker image ls --format '{{.Repository}}:{{.Tag}}' 'dtwz:src-*' | grep -vxF "$image" |
        xargs -r docker image rm >/dev/null 2>&1 || true
fi
[[ -z $tag ]] || docker tag "$image" "$tag"
log "image $image${tag:+ (tagged $tag)}"
echo "$image"
