#!/usr/bin/env bash
# Build the deployment images OFFLINE: wheels are gathered on this host (from a local wheel cache, or PyPI
# when the cache lacks one), put in each build context, and `docker build --network=none` installs them with
# `pip --no-index`. Versions are pinned to the project's virtualenv, so images run what the tests ran.
#
# The service images (postgres, registry, prometheus) hold Debian's own packages, fetched on this host with
# `apt-get download` into the build context (no registry, no apt inside the build).
#
#   docker/build_images.sh [--extras full|train|light] [--tag TAG] [--no-cache] [IMAGE...]
#     IMAGE: user-code dagster mlflow postgres registry prometheus (default: all)
#     --no-cache: rebuild every layer (what a fresh machine, e.g. CI, pays)
#
# Env: PYTHON (venv interpreter, default .venv/bin/python), BASE_IMAGE (default mlsd/python-base:bookworm,
# made by docker/engine/prepare.sh; any Debian bookworm image with python3 + venv works),
# MLSD_WHEEL_CACHE (default build/wheelhouse), MLSD_BUILD_DIR (default build/docker),
# MLSD_DEB_CACHE (default build/debs), MLSD_TORCH_WHEEL (a CPU-only torch wheel for --extras train; without it
# torch is the venv's own pin, which on PyPI is the CUDA build: several GB more per image).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DOCKER_DIR="$REPO/docker"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-mlsd/python-base:bookworm}"
WHEEL_CACHE="${MLSD_WHEEL_CACHE:-$REPO/build/wheelhouse}"
BUILD_DIR="${MLSD_BUILD_DIR:-$REPO/build/docker}"
DEB_CACHE="${MLSD_DEB_CACHE:-$REPO/build/debs}"
TORCH_WHEEL="${MLSD_TORCH_WHEEL:-}"
EXTRAS=full
TAG=latest
NO_CACHE=()
IMAGES=()

say() { echo "build_images.sh: $*"; }
die() { echo "build_images.sh: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --extras) EXTRAS="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    user-code|dagster|mlflow|postgres|registry|prometheus) IMAGES+=("$1"); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(user-code dagster mlflow postgres registry prometheus)
case "$EXTRAS" in full|train|light) ;; *) die "--extras must be full, train or light, got $EXTRAS" ;; esac
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
if [ -n "$TORCH_WHEEL" ]; then
  # A CPU-only torch replaces the venv's pin (and its CUDA libraries) in the images that train.
  [ -f "$TORCH_WHEEL" ] || die "MLSD_TORCH_WHEEL=$TORCH_WHEEL is not a file"
  cp -n "$TORCH_WHEEL" "$WHEEL_CACHE/"
  torch_version="$(basename "$TORCH_WHEEL" | cut -d- -f2)"
  grep -v -e '^torch==' -e '^torchvision==' -e '^nvidia-' -e '^triton==' "$CONSTRAINTS" >"$CONSTRAINTS.tmp"
  echo "torch==$torch_version" >>"$CONSTRAINTS.tmp"
  mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
fi

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

# Debian packages into $1, downloaded once into the deb cache (apt-get download: this host's apt sources).
debs_into() {
  local dest="$1" pkg file
  shift
  mkdir -p "$DEB_CACHE" "$dest"
  for pkg in "$@"; do
    file="$(ls "$DEB_CACHE/${pkg}"_*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$file" ]; then
      say "apt-get download $pkg into $DEB_CACHE"
      (cd "$DEB_CACHE" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
      file="$(ls "$DEB_CACHE/${pkg}"_*.deb | head -n1)"
    fi
    cp "$file" "$dest/"
  done
}

build() {
  local name="$1" dockerfile="$2" ctx="$BUILD_DIR/$1"
  shift 2
  rm -rf "$ctx" && mkdir -p "$ctx/wheels"
  cp "$DOCKER_DIR/dagster.yaml" "$DOCKER_DIR/workspace.yaml" "$ctx/"
  case "$name" in
    postgres)
      # The server and client from postgresql-15, and the libraries they link that the base image lacks.
      debs_into "$ctx/debs" postgresql-15 postgresql-client-15 libicu72 libxml2 libldap-2.5-0 libsasl2-2 \
        libsasl2-modules-db libpq5
      cp "$DOCKER_DIR/postgres/entrypoint.sh" "$ctx/" ;;
    registry)
      debs_into "$ctx/debs" docker-registry
      cp "$DOCKER_DIR/registry/config.yml" "$ctx/" ;;
    prometheus)
      debs_into "$ctx/debs" prometheus ;;
    user-code)
      cp "$DOCKER_DIR/requirements/user-code-light.txt" "$ctx/requirements-light.txt"
      cp "$DOCKER_DIR/requirements/user-code-train.txt" "$ctx/requirements-train.txt"
      full_requirements >"$ctx/requirements-full.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-$EXTRAS.txt"
      # its own folder: a code change then rebuilds only the last layer, not the dependencies
      mkdir -p "$ctx/project" && project_wheel "$ctx/project" ;;
    dagster)
      cp "$DOCKER_DIR/requirements/dagster.txt" "$ctx/requirements-dagster.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-dagster.txt"
      mkdir -p "$ctx/project" && project_wheel "$ctx/project" ;;  # the run launcher only, --no-deps
    mlflow)
      cp "$DOCKER_DIR/requirements/mlflow.txt" "$ctx/requirements-mlflow.txt"
      wheels_into "$ctx/wheels" "$ctx/requirements-mlflow.txt" ;;
  esac
  say "building mlsd/$name:$TAG from $BASE_IMAGE ($(du -sh "$ctx" | cut -f1) of context, no network)"
  # The classic builder: `--network=none` holds for every RUN step, and it needs no buildx plugin.
  DOCKER_BUILDKIT=0 docker build -q --network=none ${NO_CACHE[@]+"${NO_CACHE[@]}"} --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" \
    -f "$DOCKER_DIR/$dockerfile" -t "mlsd/$name:$TAG" "$ctx" >/dev/null
  say "built mlsd/$name:$TAG"
}

for image in "${IMAGES[@]}"; do
  case "$image" in
    user-code) build user-code Dockerfile_user_code --build-arg "MLSD_EXTRAS=$EXTRAS" ;;
    dagster) build dagster Dockerfile_dagster ;;
    mlflow) build mlflow Dockerfile_mlflow ;;
    postgres) build postgres Dockerfile_postgres ;;
    registry) build registry Dockerfile_registry ;;
    prometheus) build prometheus Dockerfile_prometheus ;;
  esac
done
