#!/usr/bin/env bash
# Everything outside Python that `make pipeline` needs (`--for tests`: also what the test suite needs), in one
# place: as root on Debian/Ubuntu it installs the missing packages and starts the engine (prepare.sh); anyone
# else gets, within seconds and before any long work, the exact commands to run. See docker/engine/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The pipeline: a venv, the Docker engine that builds and runs the server image, debootstrap for its offline
# base image, jemalloc for CPU training (see the README's "Allocator").
PIPELINE_PACKAGES=(python3 python3-venv make ca-certificates docker.io debootstrap libjemalloc2)
# Only the tests: PostgreSQL (deployment tests), Chromium (UI tests), a registry and Prometheus (real services).
TEST_PACKAGES=(postgresql chromium docker-registry prometheus)

BASE_IMAGE="${MLSD_BASE_IMAGE:-mlsd/python-base:bookworm}"
say() { echo "setup-system.sh: $*"; }

usage() { echo "usage: $0 [--for pipeline|tests]" >&2; exit 2; }
purpose=pipeline
while [ $# -gt 0 ]; do
  case "$1" in
    --for) [ $# -ge 2 ] || usage; purpose="$2"; shift 2 ;;
    --for=*) purpose="${1#--for=}"; shift ;;
    *) usage ;;
  esac
done
case "$purpose" in
  pipeline) packages=("${PIPELINE_PACKAGES[@]}") ;;
  tests) packages=("${PIPELINE_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) usage ;;
esac

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing_packages() {
  local p
  command -v dpkg-query >/dev/null || return 0
  for p in "${packages[@]}"; do installed "$p" || echo "$p"; done
}
engine_up() { command -v docker >/dev/null && timeout 15 docker info >/dev/null 2>&1; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  mapfile -t missing < <(missing_packages)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt/dpkg (e.g. `make pipeline` and `.ci/run` started side by side) instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "system packages present (${packages[*]})"
  fi
  if [ "$purpose" = tests ]; then
    # The deployment tests add and drop their own role and databases in the machine's PostgreSQL.
    pg_lsclusters --no-header | awk '$4 != "online" {print $1, $2}' | while read -r version cluster; do
      pg_ctlcluster "$version" "$cluster" start
    done
  fi
  exec docker/engine/prepare.sh
fi

# Not root (or no apt-get): nothing can be installed from here, so check and explain instead of failing late.
user="$(id -un 2>/dev/null || id -u)"
problems=()
python3 -c 'import ensurepip, venv' 2>/dev/null || problems+=("python3 cannot create a venv (python3-venv missing)")
if ! command -v docker >/dev/null; then
  problems+=("the docker CLI and engine are not installed")
elif ! engine_up; then
  if [ -S /var/run/docker.sock ] && [ -z "${DOCKER_HOST:-}" ] && ! [ -w /var/run/docker.sock ]; then
    problems+=("a Docker engine runs but $user may not use /var/run/docker.sock")
  else
    problems+=("no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}")
  fi
elif ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  problems+=("the offline base image $BASE_IMAGE is missing (building it needs root: debootstrap)")
fi
mapfile -t missing < <(missing_packages)

if [ "${#problems[@]}" -eq 0 ]; then
  [ "${#missing[@]}" -eq 0 ] || say "warning: not installed: ${missing[*]} (as root: $0 --for $purpose)"
  say "engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}, base image $BASE_IMAGE present"
  exit 0
fi

{
  echo "setup-system.sh: cannot prepare this machine as $user:"
  for p in "${problems[@]}"; do echo "  - $p"; done
  if command -v apt-get >/dev/null; then
    echo "Run once, as root (installs ${missing[*]:-nothing new}, starts dockerd, builds the base image):"
    echo "  sudo $PWD/docker/engine/setup-system.sh --for $purpose"
    if [ "$(id -u)" != 0 ]; then
      echo "and let $user use the engine (then log in again):"
      echo "  sudo usermod -aG docker $user"
    fi
  else
    echo "No apt-get here: install the equivalents of: ${packages[*]}"
    echo "then, as root: $PWD/docker/engine/prepare.sh"
  fi
  echo "Then run the command again."
} >&2
exit 1
