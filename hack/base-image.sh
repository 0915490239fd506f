#!/usr/bin/env bash
# A stand-in for the Dockerfile's Python base image, built from Debian's archive, for a
# machine whose Docker reaches no image registry (so `docker build` cannot pull
# python:*-slim-bookworm). Needs root, Docker and debootstrap.
#
#   bash hack/base-image.sh [TAG]      # default TAG: capguard-local/python:3.11-bookworm
#   docker build --build-arg PYTHON_IMAGE=TAG -f operator/Dockerfile -t capguard:0.1.0 .
#
# What it is: Debian bookworm (minbase) with Debian's python3.11, venv and pip, `python`
# on the PATH as the official image has it, nothing else. What it is not: the official
# image (that one is CPython built from source in /usr/local, 3.11.13; this one is
# Debian's 3.11 in /usr). The Dockerfile uses neither difference: it calls `python`,
# makes a virtualenv and copies it onto the same base. So an image built on it runs what
# the official image runs, under the same user, mounts and flags.
#
# pip in the build must trust what this machine's pip trusts: if pip is configured with a
# CA bundle here (`pip config get global.cert`, or PIP_CERT), that bundle becomes the
# stand-in's system bundle and its PIP_CERT. An image built for a registry should be built
# on the official base, not on this.
#
# DEBIAN_MIRROR, if set, is passed to debootstrap (its default otherwise).
set -euo pipefail

tag=${1:-capguard-local/python:3.11-bookworm}
suite=bookworm

for tool in docker debootstrap; do
  command -v "$tool" >/dev/null || { echo "base-image.sh: needs $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$suite" "$root" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >&2
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
env_pip=()
if [ -n "$ca" ] && [ -f "$ca" ]; then
  cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
  env_pip=(--change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt')
fi

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' "${env_pip[@]}" \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
docker run --rm --network none "$tag" python -c 'import sys, venv, ensurepip; print(sys.version)' >&2
echo "$tag"
