#!/usr/bin/env bash
# Installs the Debian tools the tests drive for real. Run as root it installs what is missing;
# run as anyone else it only checks, and fails loudly naming what is missing: tests never skip.
set -euo pipefail

# command -> Debian package that provides it
declare -A need=(
  [mosquitto]=mosquitto
  [fw_printenv]=libubootenv-tool
  [fw_setenv]=libubootenv-tool
  [grub-editenv]=grub-common
  [openssl]=openssl
  [curl]=curl
  # the device identity key in a TPM (a simulator) and on a PKCS#11 token; gcc for the cgo build
  [swtpm]=swtpm
  [swtpm_setup]=swtpm-tools
  [softhsm2-util]=softhsm2
  [gcc]=gcc
  # the update policy test talks to a stand-in NetworkManager on a private D-Bus
  [dbus-daemon]=dbus-daemon
  # test/powercut reads replayed disks with the tools that made them
  [mkfs.vfat]=dosfstools
  [mcopy]=mtools
  [mkenvimage]=u-boot-tools
  [e2fsck]=e2fsprogs
  [debugfs]=e2fsprogs
  # the shipped systemd units are checked against the documented drop-ins
  [systemd-analyze]=systemd
  # the release tool compresses with the reference zstd -19 (fieldota job --compress)
  [zstd]=zstd
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# moto_server (Python moto) is a second, independent S3 + IoT implementation for the release
# tests; Debian does not package it and these machines ship it with their Python.
have moto_server || { echo "deps: moto_server missing (pip install 'moto[server]'); the release tests need it and will not skip" >&2; exit 1; }

missing=()
for cmd in "${!need[@]}"; do
  have "$cmd" || missing+=("${need[$cmd]}")
done
# the update policy's time zones come from the system's zone database
[ -f /usr/share/zoneinfo/Europe/Berlin ] || missing+=(tzdata)
[ ${#missing[@]} -eq 0 ] && { echo "deps: all test tools present"; exit 0; }

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing ${pkgs[*]}; run 'sudo scripts/deps.sh' (tests need them and will not skip)" >&2
  exit 1
fi
echo "deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine; refresh once, quietly.
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian's mosquitto package enables a system broker on :1883; tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
for cmd in "${!need[@]}"; do
  have "$cmd" || { echo "deps: $cmd still missing after install" >&2; exit 1; }
done
echo "deps: ok"
