#!/usr/bin/env bash
# A local Debian bookworm image with Python 3.11, for `make images BASE_IMAGE=...` where no
# container registry can be reached (no `docker pull python:3.11-slim`): debootstrap from an apt
# mirror, then `docker import`. Needs root (debootstrap) and a Docker engine.
#   infra/docker/build-base.sh [IMAGE]       default mtlops-base:bookworm; kept if it exists
#   MIRROR=http://... REBUILD=1 infra/docker/build-base.sh
set -euo pipefail

image=${1:-mtlops-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ -z "${REBUILD:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-base: $image exists (REBUILD=1 to make it again)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: debootstrap is missing (apt-get install -y debootstrap)"; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# bookworm's python3 is 3.11, the project's Python; python-is-python3 gives `python`, as the
# official image has; ca-certificates for TLS inside the build
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image"
echo "build-base: $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=si)B)"
