#!/usr/bin/env bash
# Installs the Debian tools `make bench` drives for the delta benchmark (test/bench/delta):
# debootstrap and e2fsprogs build the images; zstd, xdelta3, casync and zchunk are the anchors
# measured beside ours. Run as root it installs what is missing; otherwise it only checks.
set -euo pipefail

declare -A need=(
  [debootstrap]=debootstrap
  [mkfs.ext4]=e2fsprogs
  [zstd]=zstd
  [xdelta3]=xdelta3
  [casync]=casync
  [zck]=zchunk
  [zck_delta_size]=zchunk
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
for cmd in "${!need[@]}"; do
  have "$cmd" || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && { echo "bench-deps: all benchmark tools present"; exit 0; }

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-deps: missing ${pkgs[*]}; run 'sudo scripts/bench-deps.sh'" >&2
  exit 1
fi
echo "bench-deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
for cmd in "${!need[@]}"; do
  have "$cmd" || { echo "bench-deps: $cmd still missing after install" >&2; exit 1; }
done
echo "bench-deps: ok"
