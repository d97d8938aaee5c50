#!/usr/bin/env bash
# Installs what the device-in-a-box tests (test/device, `make test-device`) need, and fetches the
# arm64 Debian packages the guest is built from. Host tools: run as root it installs what is
# missing with apt-get; run as anyone else it only checks and fails loudly. The arm64 packages are
# fetched with `apt-get download` through a private APT configuration (its own sources, state and
# cache under the cache dir), so the host's dpkg architectures are never touched.
# Never skips: a missing tool or package is an error.
set -euo pipefail

CACHE="${FIELDOTA_DEVICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldota-device}"

# command -> Debian package that provides it
declare -A need=(
  [qemu-system-aarch64]=qemu-system-arm
  [mkimage]=u-boot-tools
  [mkenvimage]=u-boot-tools
  [mkfs.vfat]=dosfstools
  [mcopy]=mtools
  [mkfs.ext4]=e2fsprogs
  [sfdisk]=fdisk
  [fw_printenv]=libubootenv-tool
  [cpio]=cpio
  [dpkg-deb]=dpkg
  [swtpm]=swtpm   # the board's TPM (QEMU -tpmdev emulator)
)
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
for cmd in "${!need[@]}"; do have "$cmd" || missing+=("${need[$cmd]}"); done
[ -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ] || missing+=(u-boot-qemu)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "device-deps: missing ${pkgs[*]}; run 'sudo scripts/device-deps.sh' (device tests need them and never skip)" >&2
    exit 1
  fi
  echo "device-deps: installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  for cmd in "${!need[@]}"; do have "$cmd" || { echo "device-deps: $cmd still missing after install" >&2; exit 1; }; done
  [ -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ] || { echo "device-deps: u-boot-qemu installed but /usr/lib/u-boot/qemu_arm64/u-boot.bin missing" >&2; exit 1; }
fi

# --- arm64 packages through a private APT configuration ---
ARM="$CACHE/arm64"
DEBS="$ARM/debs"
# e2fsprogs and its libraries: the slots check the data partition before mounting it.
ARM_PKGS=(linux-image-cloud-arm64 busybox-static libubootenv-tool libubootenv0.1 libc6 zlib1g
          e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1)
stamp="$ARM/fetched-$(printf '%s\n' "${ARM_PKGS[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  mkdir -p "$ARM/apt/lists/partial" "$ARM/apt/cache/archives/partial" "$ARM/apt/etc/preferences.d" "$DEBS"
  : > "$ARM/apt/status"
  # The host's Debian sources (deb822 or one-line), reused as they are.
  srcs=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    case "$f" in *disabled*) continue ;; esac
    grep -q 'debian' "$f" 2>/dev/null || continue
    srcs="$srcs $f"
  done
  [ -n "$srcs" ] || { echo "device-deps: no Debian APT sources found under /etc/apt" >&2; exit 1; }
  mkdir -p "$ARM/apt/sources.list.d"
  rm -f "$ARM/apt/sources.list.d/"*
  for f in $srcs; do cp "$f" "$ARM/apt/sources.list.d/"; done
  cat > "$ARM/apt/apt.conf" <<CONF
Dir::State "$ARM/apt";
Dir::State::Lists "$ARM/apt/lists";
Dir::State::status "$ARM/apt/status";
Dir::Cache "$ARM/apt/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$ARM/apt/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$ARM/apt/etc/preferences.d";
APT::Architecture "amd64";
APT::Architectures { "amd64"; "arm64"; };
Debug::NoLocking "true";
APT::Sandbox::User "root";
CONF
  export APT_CONFIG="$ARM/apt/apt.conf"
  apt-get update -qq >/dev/null
  # The metapackage names the versioned kernel package: download that one.
  kpkg=$(apt-cache depends linux-image-cloud-arm64:arm64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  kpkg=${kpkg%%:*}
  [ -n "$kpkg" ] || { echo "device-deps: cannot resolve linux-image-cloud-arm64:arm64" >&2; exit 1; }
  rm -f "$DEBS"/*.deb
  pkgs=("$kpkg:arm64")
  for p in "${ARM_PKGS[@]:1}"; do pkgs+=("$p:arm64"); done
  (cd "$DEBS" && apt-get download -qq "${pkgs[@]}")
  n=$(ls "$DEBS"/*.deb | wc -l)
  [ "$n" -eq ${#ARM_PKGS[@]} ] || { echo "device-deps: expected ${#ARM_PKGS[@]} arm64 packages in $DEBS, got $n" >&2; exit 1; }
  touch "$stamp"
fi
echo "device-deps: ok (arm64 packages in $DEBS)"
