#!/usr/bin/env bash
# Builds the qkms image from the repository's Dockerfile with buildah (no daemon), as CI and
# tests/image/test_image.py use it:   tests/image/build.sh [IMAGE]   (default localhost/qkms:<version>)
#
# Everything is cached outside the clone, in ${QKMS_IMAGE_CACHE:-~/.cache/qkms/image}: the
# container storage (vfs driver: no overlay mounts needed) and, where no registry is
# reachable, the base: a Debian bookworm root made with debootstrap from Debian's mirror
# (${QKMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}) and imported as
# localhost/qkms-base:bookworm. QKMS_IMAGE_BASE=python:3.11-slim-bookworm uses the registry
# image instead (the Dockerfile's default). Builds use --layers, so a rebuild after a change
# to the sources reruns only the layers from the COPY of operator/ on.
#
# Prints the image name on stdout; the build time and the image size go to stderr and to
# $cache/last-build.txt. Needs root (or a user namespace), buildah, podman and debootstrap:
#   apt-get install -y buildah podman debootstrap runc
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${QKMS_IMAGE_CACHE:-$HOME/.cache/qkms/image}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)
image="${1:-localhost/qkms:$version}"
storage=(--root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)
mkdir -p "$cache"
for tool in buildah podman debootstrap; do
  command -v "$tool" > /dev/null || { echo "$tool is missing: apt-get install -y buildah podman debootstrap runc" >&2; exit 3; }
done
exec 9> "$cache/lock"   # one build at a time on this machine
flock 9

base="${QKMS_IMAGE_BASE:-}"
if [ -z "$base" ]; then
  base=localhost/qkms-base:bookworm
  if ! podman "${storage[@]}" image exists "$base"; then
    if [ ! -e "$cache/rootfs/.complete" ]; then
      echo "debootstrap: a Debian bookworm root with Python 3.11 into $cache/rootfs" >&2
      rm -rf "$cache/rootfs.tmp" "$cache/rootfs"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$cache/rootfs.tmp" "${QKMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
      rm -rf "$cache/rootfs.tmp"/var/cache/apt/archives/*.deb "$cache/rootfs.tmp"/var/lib/apt/lists/*
      touch "$cache/rootfs.tmp/.complete"
      mv "$cache/rootfs.tmp" "$cache/rootfs"
    fi
    echo "importing the root as $base" >&2
    tar -C "$cache/rootfs" --exclude ./.complete --numeric-owner -c . |
      podman "${storage[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$base" > /dev/null
  fi
fi

# pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA, say),
# as a build secret: it never lands in a layer.
ca="${QKMS_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[ -s "$ca" ] && secret=(--secret "id=pip-ca,src=$ca")
start=$(date +%s)
buildah "${storage[@]}" bud --isolation chroot --layers --build-arg "BASE=$base" \
  "${secret[@]}" --tag "$image" --file "$root/Dockerfile" "$root" >&2
seconds=$(( $(date +%s) - start ))
size=$(podman "${storage[@]}" image inspect --format '{{.Size}}' "$image")
summary="image $image: $((size / 1000000)) MB ($size bytes), built in ${seconds}s from $base"
echo "$summary" >&2
echo "$summary" > "$cache/last-build.txt"
echo "$image"
