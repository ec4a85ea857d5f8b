#!/usr/bin/env bash
# Build the deployment images OFFLINE: wheels are gathered on this host (from a local wheel cache, or PyPI
# when the cache lacks one), put in each build context, and `docker build --network=none` installs them with
# `pip --no-index`. Versions are pinned to the project's virtualenv, so images run what the tests ran.
#
#   docker/build_images.sh [--extras full|light] [--tag TAG] [IMAGE...]   IMAGE: user-code dagster mlflow (all)
#
# Env: PYTHON (venv interpreter, default .venv/bin/python), BASE_IMAGE (default mlsd/python-base:bookworm,
# made by docker/engine/prepare.sh; any Debian bookworm image with python3 + venv works),
# MLSD_WHEEL_CACHE (default build/wheelhouse), MLSD_BUILD_DIR (default build/docker).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DOCKER_DIR="$REPO/docker"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-mlsd/python-base:bookworm}"
WHEEL_CACHE="${MLSD_WHEEL_CACHE:-$REPO/build/wheelhouse}"
BUILD_DIR="${MLSD_BUILD_DIR:-$REPO/build/docker}"
EXTRAS=full
TAG=latest
IMAGES=()

say() { echo "build_images.sh: $*"; }
die() { echo "build_images.sh: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --extras) EXTRAS="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    user-code|dagster|mlflow) IMAGES+=("$1"); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(user-code dagster mlflow)
case "$EXTRAS" in full|light) ;; *) die "--extras must be full or light, got $EXTRAS" ;; esac
[ -x "$PYTHON" ] || die "no Python at $PYTHON (make setup, or set PYTHON)"
command -v docker >/dev/null || die "docker CLI not installed"

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ "$BASE_IMAGE" = mlsd/python-base:bookworm ] || die "base image $BASE_IMAGE not present: load or pull it first"
  "$DOCKER_DIR/engine/prepare.sh"
fi

mkdir -p "$WHEEL_CACHE" "$BUILD_DIR"
CONSTRAINTS="$BUILD_DIR/constraints.txt"
# Pin to the virtualenv; skip the project itself and anything installed from a local path.
"$PYTHON" -m pip freeze --exclude-editable | grep -v -e ' @ ' -e '^mlsd-assets=' >"$CONSTRAINTS"

# Wheels for requirement file $2 into $1: offline from the cache when it has them all, else fill the cache first.
wheels_into() {
  local dest="$1" req="$2"
  if ! "$PYTHON" -m pip wheel -q --no-index --find-links "$WHEEL_CACHE" -c "$CONSTRAINTS" \
       --wheel-dir "$dest" -r "$req" 2>/dev/null; then
    say "filling wheel cache $WHEEL_CACHE for $(basename "$req")"
    "$PYTHON" -m pip wheel -q --prefer-binary --find-links "$WHEEL_CACHE" -c "$CONSTRAINTS" \
      --wheel-dir "$WHEEL_CACHE" -r "$req"
    "$PYTHON" -m pip wheel -q --no-index --find-links "$WHEEL_CACHE" -c "$CONSTRAINTS" \
      --wheel-dir "$dest" -r "$req"
  fi
}

# The project's runtime dependencies, straight from pyproject.toml.
full_requirements() {
  "$PYTHON" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print("\n".join(tomllib.load(fh)["project"]["dependencies"]))
PY
}

project_wheel() {
  local dest="$1" src
  # From a clean copy, so the build never writes into the working tree.
  src="$(mktemp -d "${TMPDIR:-/tmp}/mlsd-project-src.XXXXXX")"
  cp -r "$REPO/pyproject.toml" "$REPO/mlsd_assets" "$src/"
  if [ -f "$REPO/README.md" ]; then cp "$REPO/README.md" "$src/"; else echo "# mlsd" >"$src/README.md"; fi
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  (cd "$src" && "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$dest" . 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'SetuptoolsDeprecationWarning' || true)
  ls "$dest"/mlsd_assets-*.whl >/dev/null 2>&1 || die "building the mlsd-assets wheel failed"
  rm -rf "$src"
}

build() {
  local name="$1" dockerfile="$2" ctx="$BUILD_DIR/$1"
  shift 2
  rm -rf "$ctx" && mkdir -p "$ctx/wheels"
  cp "$DOCKER_DIR/dagster.yaml" "$DOCKER_DIR/workspace.yaml" "$ctx/"
  case "$name" in
    user-code)
      cp "$DOCKER_DIR/requirements/user-code-light.txt" "$ctx/requirements-light.txt"
      full_requirements >"$ctx/requirements-full.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-$EXTRAS.txt"
      project_wheel "$ctx/wheels" ;;
    dagster)
      cp "$DOCKER_DIR/requirements/dagster.txt" "$ctx/requirements-dagster.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-dagster.txt" ;;
    mlflow)
      cp "$DOCKER_DIR/requirements/mlflow.txt" "$ctx/requirements-mlflow.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-mlflow.txt" ;;
  esac
  say "building mlsd/$name:$TAG from $BASE_IMAGE ($(du -sh "$ctx/wheels" | cut -f1) of wheels, no network)"
  # The classic builder: `--network=none` holds for every RUN step, and it needs no buildx plugin.
  DOCKER_BUILDKIT=0 docker build -q --network=none --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" \
    -f "$DOCKER_DIR/$dockerfile" -t "mlsd/$name:$TAG" "$ctx" >/dev/null
  say "built mlsd/$name:$TAG"
}

for image in "${IMAGES[@]}"; do
  case "$image" in
    user-code) build user-code Dockerfile_user_code --build-arg "MLSD_EXTRAS=$EXTRAS" ;;
    dagster) build dagster Dockerfile_dagster ;;
    mlflow) build mlflow Dockerfile_mlflow ;;
  esac
done
