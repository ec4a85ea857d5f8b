#!/usr/bin/env bash
# Make a Docker engine and the offline base image available, for tests, CI and air-gapped sites.
# Idempotent and safe to run concurrently (one flock). Needs root only when it has to start dockerd
# or debootstrap the base image. See docker/engine/README.md.
set -euo pipefail

BASE_IMAGE="${MLSD_BASE_IMAGE:-mlsd/python-base:bookworm}"
DATA_ROOT="${MLSD_DOCKER_DATA_ROOT:-/var/lib/docker}"
CACHE_DIR="${MLSD_CACHE_DIR:-/var/cache/mlsd}"
LOG_FILE="${MLSD_DOCKERD_LOG:-/var/log/mlsd-dockerd.log}"
LOCK_FILE="${MLSD_ENGINE_LOCK:-/var/lock/mlsd-docker-engine.lock}"
START_TIMEOUT="${MLSD_DOCKERD_START_TIMEOUT:-90}"
# Empty: dockerd's own choice, overlay2 where the data root's filesystem supports it (ext4, xfs), else vfs. vfs
# copies the whole filesystem for every build step and container (~10 s each for the server image on a 2-core VM).
STORAGE_DRIVER="${MLSD_DOCKER_STORAGE_DRIVER:-}"
MIRROR="${MLSD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
ROOTFS_TARBALL="$CACHE_DIR/debootstrap-$SUITE-minbase-python3.tar"

say() { echo "prepare.sh: $*"; }
die() { echo "prepare.sh: ERROR: $*" >&2; exit 1; }

engine_up() { timeout 15 docker info >/dev/null 2>&1; }

# The socket dockerd listens on: DOCKER_HOST when it is a unix socket, else the default.
socket_path() {
  case "${DOCKER_HOST:-}" in
    "") echo /var/run/docker.sock ;;
    unix://*) echo "${DOCKER_HOST#unix://}" ;;
    *) return 1 ;;
  esac
}

start_engine() {
  local sock
  sock="$(socket_path)" || die "no engine answers at DOCKER_HOST=$DOCKER_HOST and only a local unix socket can be started here"
  [ "$(id -u)" = 0 ] || die "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock} and starting dockerd needs root"
  command -v dockerd >/dev/null || die "dockerd not installed (apt-get install -y docker.io)"
  mkdir -p "$DATA_ROOT" "$(dirname "$LOG_FILE")" "$(dirname "$sock")"
  say "no engine answers: starting dockerd (storage driver ${STORAGE_DRIVER:-chosen by dockerd}, bridge networking) on unix://$sock, data-root $DATA_ROOT, log $LOG_FILE"
  setsid dockerd ${STORAGE_DRIVER:+--storage-driver="$STORAGE_DRIVER"} \
    --data-root="$DATA_ROOT" --host="unix://$sock" --pidfile="$DATA_ROOT/mlsd-dockerd.pid" \
    >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
  local pid=$! waited=0
  until engine_up; do
    kill -0 "$pid" 2>/dev/null || die "dockerd exited during start-up; last lines of $LOG_FILE:
$(tail -n 20 "$LOG_FILE")"
    [ "$waited" -ge "$START_TIMEOUT" ] || { sleep 1; waited=$((waited + 1)); continue; }
    die "dockerd (pid $pid) did not answer within ${START_TIMEOUT}s; see $LOG_FILE"
  done
  say "dockerd started (pid $pid) after ${waited}s, storage driver $(docker info --format '{{.Driver}}')"
}

# A minimal Debian with python3, cached as a tarball so later machines/runs skip debootstrap.
build_rootfs_tarball() {
  [ "$(id -u)" = 0 ] || die "base image $BASE_IMAGE is missing and debootstrap needs root"
  command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install -y debootstrap)"
  mkdir -p "$CACHE_DIR"
  local dir
  dir="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  trap 'rm -rf "$dir" "$ROOTFS_TARBALL.tmp"' EXIT
  say "debootstrap $SUITE (minbase + python3) from $MIRROR into $dir"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$dir" "$MIRROR" \
    >"$CACHE_DIR/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
    "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/info "$dir"/usr/share/locale
  chmod 0755 "$dir"  # mktemp made it 0700: as the image's / it would lock every non-root user out
  tar --numeric-owner -C "$dir" -cf "$ROOTFS_TARBALL.tmp" .
  mv "$ROOTFS_TARBALL.tmp" "$ROOTFS_TARBALL"
  rm -rf "$dir"
  trap - EXIT
  say "cached root filesystem at $ROOTFS_TARBALL ($(du -h "$ROOTFS_TARBALL" | cut -f1))"
}

ensure_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE present"
    return
  fi
  if [ -s "$ROOTFS_TARBALL" ]; then
    say "base image $BASE_IMAGE missing: importing cached $ROOTFS_TARBALL"
  else
    build_rootfs_tarball
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    "$ROOTFS_TARBALL" "$BASE_IMAGE" >/dev/null || die "docker import of $ROOTFS_TARBALL as $BASE_IMAGE failed"
  say "imported base image $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
}

command -v docker >/dev/null || die "docker CLI not installed (apt-get install -y docker.io)"
mkdir -p "$(dirname "$LOCK_FILE")"
exec 9>"$LOCK_FILE"
flock -w 900 9 || die "could not take $LOCK_FILE within 900s (another prepare.sh is stuck?)"

if engine_up; then
  say "engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
else
  start_engine
fi
ensure_base_image
say "ready: DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock} base image $BASE_IMAGE"
