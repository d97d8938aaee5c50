# fieldota device-in-a-box: U-Boot boot script (docs/ab-slots.md, docs/device-in-a-box.md).
# Stock Debian u-boot-qemu cannot save its own environment where Linux reaches it, so the A/B
# variables live in an env-format file on the FAT boot partition (virtio 0:1, /uboot.env), read
# with `env import -c` and written with `env export -c` + fatwrite: the same CRC32+data format
# that fw_printenv/fw_setenv read and write from Linux.
setenv fieldota_vars fieldota_slot fieldota_try bootcount bootlimit fieldota_bad_a fieldota_bad_b fieldota_canary
# Not ${loadaddr}: this script runs from there.
setenv fieldota_envaddr 0x4f000000
if load virtio 0:1 ${fieldota_envaddr} /uboot.env; then
    if env import -c ${fieldota_envaddr} 0x4000 ${fieldota_vars}; then
        echo "fieldota: env slot=${fieldota_slot} try=${fieldota_try} bootcount=${bootcount} bootlimit=${bootlimit}"
    else
        echo "fieldota: /uboot.env failed its CRC; booting slot a"
    fi
else
    echo "fieldota: no /uboot.env; booting slot a"
fi
if test -z "${bootlimit}"; then setenv bootlimit 1; fi
if test -z "${bootcount}"; then setenv bootcount 0; fi
if test -z "${fieldota_bad_a}"; then setenv fieldota_bad_a 0; fi
if test -z "${fieldota_bad_b}"; then setenv fieldota_bad_b 0; fi
if test -z "${fieldota_canary}"; then setenv fieldota_canary 0; fi
if test "${fieldota_slot}" != "b"; then setenv fieldota_slot a; fi
if test "${fieldota_try}" = "1"; then
    setexpr bootcount ${bootcount} + 1
    if test ${bootcount} -gt ${bootlimit}; then
        echo "fieldota: slot ${fieldota_slot} used its ${bootlimit} trial boot(s); falling back"
        if test "${fieldota_slot}" = "a"; then
            setenv fieldota_bad_a 1; setenv fieldota_slot b
        else
            setenv fieldota_bad_b 1; setenv fieldota_slot a
        fi
        setenv fieldota_try 0
        setenv bootcount 0
    fi
    echo "fieldota: trial boot: saving bootcount=${bootcount} slot=${fieldota_slot}"
    env export -c -s 0x4000 ${fieldota_envaddr} ${fieldota_vars}
    fatwrite virtio 0:1 ${fieldota_envaddr} /uboot.env 0x4000
fi
if test "${fieldota_slot}" = "a"; then setenv fieldota_part 2; else setenv fieldota_part 3; fi
setenv bootargs "console=ttyAMA0 root=/dev/vda${fieldota_part} fieldota.slot=${fieldota_slot} panic=1 rootwait quiet"
echo "fieldota: booting slot ${fieldota_slot} (virtio 0:${fieldota_part})"
load virtio 0:1 ${kernel_addr_r} /Image
load virtio 0:1 ${ramdisk_addr_r} /initramfs.cpio.gz
booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
# Only reached when the kernel did not start: during a trial, reset so that the next boot counts.
if test "${fieldota_try}" = "1"; then reset; fi
