#!/usr/bin/env bash
# Builds Skein's container image without a registry (nothing to pull): the root file system
# is made here, from a skein binary built on this machine and the shared libraries it links
# (as ldd finds them), `docker import`ed, and the Dockerfile's `offline` stage is built on it.
# With a registry, `docker build -t skein:VERSION .` does the same from the Dockerfile alone.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/docker-image.sh [IMAGE]

Builds IMAGE (default skein:<crate version>, also tagged skein:latest when defaulted)
from the Dockerfile's `offline` stage, with no registry.

  SKEIN_BIN   the binary to put in the image (default: target/release/skein, brought up
              to date with `cargo build --release -p skein-broker --bin skein` first);
              its debug information is stripped from the copy in the image
  DOCKER      the docker command (default: docker)

The image runs as user 65532 with the data directory /var/lib/skein, like the
Dockerfile's default stage. Needs bash, ldd, tar and a Docker engine.
USAGE
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  -*) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
docker=${DOCKER:-docker}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
image=${1:-skein:$version}
also_latest=$([ $# -eq 0 ] && echo yes || echo no)

die() { echo "docker-image.sh: $*" >&2; exit 1; }

command -v "$docker" >/dev/null 2>&1 || die "no '$docker' command: a Docker engine is needed"
"$docker" info >/dev/null 2>&1 || die "the Docker engine does not answer ('$docker info' failed)"
command -v ldd >/dev/null 2>&1 || die "ldd is needed to find the libraries the binary links"

# The two final stages must agree: the settings after each stage's FROM, COPY lines aside.
stage_settings() {
  awk -v want="$1" '
    /^FROM / { stage = ($0 ~ want) ? 1 : 0; next }
    stage && /^(LABEL|ENV|USER|WORKDIR|EXPOSE|ENTRYPOINT|CMD|VOLUME|STOPSIGNAL) / { print }
  ' "$repo/Dockerfile"
}
offline_settings=$(stage_settings ' AS offline$')
default_settings=$(stage_settings '^FROM \$\{BASE_IMAGE\}$')
if [ -z "$offline_settings" ] || [ "$offline_settings" != "$default_settings" ]; then
  diff <(echo "$offline_settings") <(echo "$default_settings") >&2 || true
  die "the Dockerfile's offline and default stages differ in their settings (above)"
fi

if [ -n "${SKEIN_BIN:-}" ]; then
  bin=$SKEIN_BIN
else
  (cd "$repo" && cargo build --release -p skein-broker --bin skein)
  bin=$repo/target/release/skein
fi
[ -x "$bin" ] || die "$bin is not an executable"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/var/lib/skein"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$root/usr/local/bin/skein" "$bin"
else
  cp "$bin" "$root/usr/local/bin/skein"
fi
chmod 0755 "$root/usr/local/bin/skein"

# Every library at the path the dynamic loader found it at (a static binary has none).
libs=$(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' || true)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# The user of the Dockerfile's base image (nonroot, 65532), names resolved from /etc/hosts
# first (Docker and Kubernetes write it), then DNS.
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

# Owners set in the archive, so that this works without root too.
tar -C "$root" -cf "$work/root.tar" --numeric-owner --owner=0 --group=0 --exclude=./var/lib/skein .
tar -C "$root" -rf "$work/root.tar" --numeric-owner --owner=65532 --group=65532 ./var/lib/skein

base="${image%%:*}-root:build-$$"
"$docker" import --message "skein root file system (scripts/docker-image.sh)" "$work/root.tar" "$base" >/dev/null
built=0
mkdir "$work/context"
"$docker" build --quiet --target offline --build-arg "OFFLINE_ROOT=$base" \
  -f "$repo/Dockerfile" -t "$image" "$work/context" >/dev/null && built=1
# The imported root stays as the image's first layer; only its name goes.
"$docker" rmi "$base" >/dev/null 2>&1 || true
[ "$built" = 1 ] || die "docker build failed"
if [ "$also_latest" = yes ]; then
  "$docker" tag "$image" "${image%%:*}:latest"
fi

# The image runs: the binary finds its libraries and answers.
"$docker" run --rm --read-only "$image" --version >/dev/null \
  || die "the image was built but '$image --version' failed in it"
echo "$image"
