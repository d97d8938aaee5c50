#!/usr/bin/env bash
# Builds the device-in-a-box images from Debian packages only (docs/device-in-a-box.md).
#
#   build-image.sh base                 extract kernel, modules, busybox, libubootenv (cached)
#   build-image.sh slot OUT EXTRA KIND  a root slot (ext4 image): the base user space + the
#                                       files under EXTRA (agent, config, key, version);
#                                       KIND = normal | noboot (init exits at once)
#   build-image.sh disk OUT SLOT_A [DATA]
#                                       the whole disk: p1 boot (FAT: Image, initramfs,
#                                       boot.scr, uboot.env + uboot-redund.env), p2 slot a, p3 slot b (empty),
#                                       p4 data (ext4: /fieldota, the agent's state, and the files
#                                       under DATA, e.g. app/ for files jobs and binary swaps)
#
# The slow part (base) is cached under $FIELDOTA_DEVICE_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/fieldota-device), keyed by the packages and this script's guest
# files; slots and disks take about a second. Needs scripts/device-deps.sh to have run.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${FIELDOTA_DEVICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldota-device}"
DEBS="$CACHE/arm64/debs"
SLOT_MB=${SLOT_MB:-24}   # partition size = slot image size
BOOT_MB=40
DATA_MB=16
ENV_SIZE=0x4000
PATH="$PATH:/usr/sbin:/sbin"

die() { echo "build-image: $*" >&2; exit 1; }

base_dir() {
  local key
  key=$( (ls "$DEBS"; cat "$HERE/guest/initramfs-init" "$0") | sha256sum | cut -c1-12)
  echo "$CACHE/base-$key"
}

cmd_base() {
  ls "$DEBS"/linux-image-*_arm64.deb >/dev/null 2>&1 || die "no arm64 packages in $DEBS: run scripts/device-deps.sh"
  local B; B=$(base_dir)
  if [ -f "$B/done" ]; then echo "$B"; return; fi
  rm -rf "$B" "$B.tmp"; mkdir -p "$B.tmp"; local T="$B.tmp"
  mkdir -p "$T/x"
  for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$T/x"; done
  local kver; kver=$(ls "$T/x/lib/modules")
  # The cloud kernel's vmlinuz is an uncompressed arm64 Image: booti takes it as it is.
  cp "$T/x/boot/vmlinuz-$kver" "$T/Image"
  # initramfs: busybox, the modules (flat), the init.
  local I="$T/initramfs"
  mkdir -p "$I/bin" "$I/lib/modules" "$I/proc" "$I/sys" "$I/dev" "$I/newroot"
  cp "$T/x/bin/busybox" "$I/bin/busybox"
  for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net fat vfat nls_cp437 nls_ascii tpm_tis_core tpm_tis; do
    f=$(find "$T/x/lib/modules/$kver" -name "$m.ko" | head -1)
    [ -n "$f" ] || die "module $m not in the kernel package"
    cp "$f" "$I/lib/modules/$m.ko"
  done
  cp "$HERE/guest/initramfs-init" "$I/init"; chmod 755 "$I/init"
  (cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$T/initramfs.cpio.gz"
  # skel: the user space every slot shares (busybox applets as links, libubootenv-tool + libs).
  local S="$T/skel"
  mkdir -p "$S/bin" "$S/sbin" "$S/usr/bin" "$S/usr/sbin" "$S/lib/aarch64-linux-gnu" "$S/etc/fieldota" \
           "$S/proc" "$S/sys" "$S/dev" "$S/tmp" "$S/run" "$S/boot" "$S/data" "$S/var/lib/fieldota" "$S/root"
  cp "$T/x/bin/busybox" "$S/bin/busybox"
  for a in sh ash mount umount mkdir cat echo sed ip sleep sync reboot poweroff ls cp mv rm ln dd \
           true false grep awk ps kill killall setsid touch date uname dmesg hexdump md5sum sha256sum head tail wc test stat df du; do
    ln -sf busybox "$S/bin/$a"
  done
  cp "$T/x/usr/bin/fw_printenv" "$S/usr/bin/fw_printenv"
  cp "$T/x/usr/bin/fw_setenv" "$S/usr/bin/fw_setenv"
  mkdir -p "$S/lib"
  cp -L "$T/x/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" "$S/lib/ld-linux-aarch64.so.1"
  # e2fsck: slot-init checks the data partition before mounting it.
  f=$(find "$T/x" -path '*/sbin/e2fsck' | head -1)
  [ -n "$f" ] || die "e2fsck not in the packages"
  cp "$f" "$S/sbin/e2fsck"
  for l in libc.so.6 libz.so.1 libubootenv.so.0 libext2fs.so.2 libe2p.so.2 libcom_err.so.2 libblkid.so.1 libuuid.so.1; do
    f=$(find "$T/x" -name "$l" | head -1)
    [ -n "$f" ] || die "library $l not in the packages"
    cp -L "$f" "$S/lib/aarch64-linux-gnu/$l"
  done
  # Redundant env: two files on the boot partition (boot.cmd reads and writes the same pair).
  printf '/boot/uboot.env 0x0 %s\n/boot/uboot-redund.env 0x0 %s\n' $ENV_SIZE $ENV_SIZE > "$S/etc/fw_env.config"
  # Read-only pflash bank 2 holding U-Boot's own environment (it replaces the built-in default
  # environment, so the load addresses of the default are repeated): no autoboot delay, run our script.
  cat > "$T/flash-env.txt" <<ENV
bootdelay=0
fdt_addr=0x40000000
scriptaddr=0x40200000
kernel_addr_r=0x40400000
ramdisk_addr_r=0x44000000
fdt_high=0xffffffff
initrd_high=0xffffffff
stdin=pl011@9000000
stdout=pl011@9000000
stderr=pl011@9000000
bootcmd=virtio scan; load virtio 0:1 \${scriptaddr} /boot.scr && source \${scriptaddr}; echo fieldota: boot script failed; reset
ENV
  mkenvimage -s 0x40000 -o "$T/flash1.img" "$T/flash-env.txt"
  truncate -s 64M "$T/flash1.img"
  rm -rf "$T/x"
  touch "$T/done"
  # Older bases (other packages or guest files) are dead weight.
  for old in "$CACHE"/base-*; do [ "$old" = "$B.tmp" ] || rm -rf "$old"; done
  mv "$T" "$B"
  echo "$B"
}

cmd_slot() {
  local out=$1 extra=$2 kind=$3 B; B=$(cmd_base)
  local R; R=$(mktemp -d); chmod 755 "$R"
  cp -a "$B/skel/." "$R/"
  cp -a "$extra/." "$R/"
  case "$kind" in
    normal) cp "$HERE/guest/slot-init" "$R/sbin/init" ;;
    noboot) cp "$HERE/guest/noboot-init" "$R/sbin/init" ;;
    *) die "slot kind $kind is not normal or noboot" ;;
  esac
  cp "$HERE/guest/fieldota-reboot" "$R/sbin/fieldota-reboot"
  chmod 755 "$R/sbin/init" "$R/sbin/fieldota-reboot"
  rm -f "$out"
  # mkfs.ext4 -d fills the file system without mounting anything; no metadata_csum/64bit, like the
  # reference layout (any image works: the job signs the bytes as built).
  mkfs.ext4 -q -F -L "fieldota-slot" -O ^metadata_csum,^64bit -d "$R" "$out" "${SLOT_MB}M"
  rm -rf "$R"
}

cmd_disk() {
  local out=$1 slota=$2 datadir=${3:-} B; B=$(cmd_base)
  local W; W=$(mktemp -d)
  mkimage -A arm64 -O linux -T script -C none -d "$HERE/boot.cmd" "$W/boot.scr" >/dev/null
  printf '%s\n' fieldota_slot=a fieldota_try=0 bootcount=0 bootlimit=1 fieldota_bad_a=0 fieldota_bad_b=0 fieldota_canary=0 > "$W/env.txt"
  # Both copies start equal (flags 1): copy 0 is current; the first write goes to copy 1, flags 2.
  mkenvimage -r -s $ENV_SIZE -o "$W/uboot.env" "$W/env.txt"
  cp "$W/uboot.env" "$W/uboot-redund.env"
  # p1 boot (FAT)
  rm -f "$W/boot.img"; mkfs.vfat -C -n FDBOOT "$W/boot.img" $((BOOT_MB*1024)) >/dev/null
  mcopy -i "$W/boot.img" "$B/Image" "$B/initramfs.cpio.gz" "$W/boot.scr" "$W/uboot.env" "$W/uboot-redund.env" ::/
  # p4 data (ext4): the state dir (bind-mounted at /var/lib/fieldota by slot-init) and DATA.
  # Inode tables and the journal are initialised now, not lazily by the first mount: the
  # board's first minutes would otherwise be full of background zeroing writes.
  mkdir -p "$W/data/fieldota"; chmod 700 "$W/data/fieldota"
  [ -z "$datadir" ] || cp -a "$datadir/." "$W/data/"
  mkfs.ext4 -q -F -L fieldota-data -E lazy_itable_init=0,lazy_journal_init=0 -d "$W/data" "$W/data.img" "${DATA_MB}M"
  local total=$((1 + BOOT_MB + SLOT_MB + SLOT_MB + DATA_MB + 1))
  rm -f "$out"; truncate -s "${total}M" "$out"
  sfdisk -q "$out" <<PT
label: dos
start=1MiB, size=${BOOT_MB}MiB, type=c, bootable
size=${SLOT_MB}MiB, type=83
size=${SLOT_MB}MiB, type=83
size=${DATA_MB}MiB, type=83
PT
  local off=1
  dd if="$W/boot.img" of="$out" bs=1M seek=$off conv=notrunc,sparse status=none; off=$((off + BOOT_MB))
  dd if="$slota" of="$out" bs=1M seek=$off conv=notrunc,sparse status=none; off=$((off + SLOT_MB + SLOT_MB))
  dd if="$W/data.img" of="$out" bs=1M seek=$off conv=notrunc,sparse status=none
  rm -rf "$W"
}

case "${1:-}" in
  base) cmd_base ;;
  slot) [ $# -eq 4 ] || die "usage: slot OUT EXTRA_DIR normal|noboot"; cmd_slot "$2" "$3" "$4" ;;
  disk) [ $# -eq 3 ] || [ $# -eq 4 ] || die "usage: disk OUT SLOT_A_IMAGE [DATA_DIR]"; cmd_disk "$2" "$3" "${4:-}" ;;
  *) die "usage: build-image.sh base | slot OUT EXTRA KIND | disk OUT SLOT_A [DATA]" ;;
esac
