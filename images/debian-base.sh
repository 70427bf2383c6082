#!/usr/bin/env bash
# Makes a Debian bookworm base image from Debian's packages, for machines that reach Debian's mirror but
# no image registry: debootstrap a minimal root file system and import it with buildah (as root).
#   images/debian-base.sh [IMAGE]    default IMAGE: localhost/debian:bookworm-minbase
# Then: BASE=localhost/debian:bookworm-minbase make images
# Environment: MIRROR (default http://deb.debian.org/debian), STORAGE_DRIVER (buildah's, e.g. vfs).
set -euo pipefail
IMAGE=${1:-localhost/debian:bookworm-minbase}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "debian-base.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
rootfs=$work/rootfs
container=""
cleanup() { [[ -z $container ]] || buildah rm "$container" >/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# The images install python3 themselves; having it here only saves their apt-get a download.
debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv bookworm "$rootfs" "$MIRROR"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
container=$(buildah from scratch)
tar -C "$rootfs" -cf "$work/rootfs.tar" .
buildah add "$container" "$work/rootfs.tar" /  # a local tar archive is extracted
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
buildah commit --quiet "$container" "$IMAGE"
echo "debian-base.sh: $IMAGE"
