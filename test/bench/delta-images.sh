#!/usr/bin/env bash
# Builds the Debian image pairs the delta benchmark compares (issue 13, docs/delta-updates.md):
#
#   delta-images.sh DIR     writes into DIR (cached: rebuilt only when this script changes)
#     old.img               debootstrap --variant=minbase bookworm, made into ext4 by mkfs.ext4 -d
#     added.img             old + one added package (less) + one upgraded package (perl-base, from
#                           bookworm-security)
#     upgraded.img          old + every pending bookworm-security upgrade (files replaced in place,
#                           names kept)
#     *-stable.img          the same three with stable metadata (fixed UUID, hash seed and time),
#                           for the "reproducible image" stretch measurement
#
# Needs root (debootstrap, chroot) and scripts/bench-deps.sh. Images are IMG_MB (default 1024) MiB.
set -euo pipefail

OUT="${1:?usage: delta-images.sh DIR}"
IMG_MB=${IMG_MB:-1024}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
PATH="$PATH:/usr/sbin:/sbin"
key=$( (cat "$0"; echo "$IMG_MB") | sha256sum | cut -c1-12)

die() { echo "delta-images: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and chroot)"
if [ -f "$OUT/done-$key" ]; then echo "delta-images: cached in $OUT"; exit 0; fi
mkdir -p "$OUT/debs"
rm -rf "$OUT/root-old" "$OUT/root-added" "$OUT/root-upgraded" "$OUT"/done-*

# chrooted apt runs get /proc and are always unmounted again
in_root() { # DIR CMD...
  local d=$1; shift
  mount -t proc proc "$d/proc"
  local rc=0
  chroot "$d" env DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
  umount "$d/proc"
  return $rc
}

# an image as a release pipeline would leave it: no package lists, no cached .debs
tidy() {
  rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin
}

echo "delta-images: debootstrap (minbase, bookworm)"
debootstrap --variant=minbase --cache-dir="$OUT/debs" bookworm "$OUT/root-old" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
  || die "debootstrap failed: see $OUT/debootstrap.log"
echo "deb $SECURITY bookworm-security main" > "$OUT/root-old/etc/apt/sources.list.d/security.list"
tidy "$OUT/root-old"

for change in added upgraded; do
  cp -a "$OUT/root-old" "$OUT/root-$change"
  in_root "$OUT/root-$change" apt-get update -qq
  case $change in
    added)    in_root "$OUT/root-$change" apt-get install -y -qq --no-install-recommends less perl-base ;;
    upgraded) in_root "$OUT/root-$change" apt-get upgrade -y -qq ;;
  esac
  in_root "$OUT/root-$change" dpkg-query -W -f '${Package} ${Version}\n' > "$OUT/$change.packages"
  tidy "$OUT/root-$change"
done
chroot "$OUT/root-old" dpkg-query -W -f '${Package} ${Version}\n' > "$OUT/old.packages"

for name in old added upgraded; do
  rm -f "$OUT/$name.img" "$OUT/$name-stable.img"
  mkfs.ext4 -q -F -L rootfs -d "$OUT/root-$name" "$OUT/$name.img" "${IMG_MB}M"
  # Stable metadata: the same UUID, directory hash seed and timestamps for every release.
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L rootfs -U 6f1d0c2e-4b8a-4d6e-9a51-0f1e2d3c4b5a \
    -E hash_seed=2b7e1516-28ae-4d2a-a6f7-15884e8e3c3d -d "$OUT/root-$name" "$OUT/$name-stable.img" "${IMG_MB}M"
done
rm -rf "$OUT/root-old" "$OUT/root-added" "$OUT/root-upgraded"
touch "$OUT/done-$key"
echo "delta-images: built in $OUT"
