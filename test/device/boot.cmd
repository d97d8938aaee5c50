# fieldota device-in-a-box: U-Boot boot script (docs/ab-slots.md, docs/device-in-a-box.md).
# Stock Debian u-boot-qemu cannot save its own environment where Linux reaches it, so the A/B
# variables live in a redundant env on the FAT boot partition (virtio 0:1): two files,
# /uboot.env and /uboot-redund.env, each in libubootenv's redundant layout
#     CRC32 (4 bytes) | flags (1 byte) | data (0x4000 - 5 bytes)
# (/etc/fw_env.config in the slots names both). The valid copy whose flags byte is one more than
# the other's (mod 256; setexpr prints hex without 0x, so 0xff + 1 is "100") is current; a write goes to the other copy with flags + 1, so a power cut
# during a write leaves the current copy intact. The stock build's `env import -c`/`env export -c`
# know only the single-copy layout (CRC32 | data), so the script moves the flags byte out of the
# way in a scratch buffer before importing and puts it back after exporting.
setenv fieldota_vars fieldota_slot fieldota_try bootcount bootlimit fieldota_bad_a fieldota_bad_b fieldota_canary
# Buffers away from ${loadaddr} (this script runs from there) and from the kernel and initramfs.
setenv fe_0 0x4f000000
setenv fe_1 0x4f010000
setenv fe_t 0x4f020000
# fe_unpack SRC: copy SRC's CRC and data to fe_t in the single-copy layout, read SRC's flags
# into fe_f, and fe_ok=1 if the CRC matches (an import of a name that is never set checks the
# CRC and changes nothing).
setenv fe_unpack 'mw.b ${fe_t} 0 0x4000; cp.b ${fe_src} ${fe_t} 4; setexpr fe_s ${fe_src} + 5; setexpr fe_d ${fe_t} + 4; cp.b ${fe_s} ${fe_d} 0x3ffb; setexpr fe_s ${fe_src} + 4; setexpr.b fe_f *${fe_s}; setenv fe_ok 0; if env import -c ${fe_t} 0x3fff fieldota_none; then setenv fe_ok 1; fi'
setenv fe_ok0 0
setenv fe_ok1 0
if load virtio 0:1 ${fe_0} /uboot.env; then
    setenv fe_src ${fe_0}; run fe_unpack; setenv fe_ok0 ${fe_ok}; setenv fe_f0 ${fe_f}
fi
if load virtio 0:1 ${fe_1} /uboot-redund.env; then
    setenv fe_src ${fe_1}; run fe_unpack; setenv fe_ok1 ${fe_ok}; setenv fe_f1 ${fe_f}
fi
# Current copy: the only valid one, or copy 1 when its flags are copy 0's + 1.
setenv fe_cur none
if test "${fe_ok0}" = "1"; then setenv fe_cur 0; fi
if test "${fe_ok1}" = "1"; then
    if test "${fe_ok0}" != "1"; then
        setenv fe_cur 1
    else
        setexpr fe_n ${fe_f0} + 1
        if test "${fe_n}" = "100"; then setenv fe_n 0; fi
        if test "${fe_n}" = "${fe_f1}"; then setenv fe_cur 1; fi
    fi
fi
if test "${fe_cur}" = "none"; then
    echo "fieldota: no valid env copy; booting slot a"
    setenv fe_f 0
else
    if test "${fe_cur}" = "0"; then setenv fe_src ${fe_0}; else setenv fe_src ${fe_1}; fi
    run fe_unpack
    env import -c ${fe_t} 0x3fff ${fieldota_vars}
    echo "fieldota: env slot=${fieldota_slot} try=${fieldota_try} bootcount=${bootcount} bootlimit=${bootlimit} (copy ${fe_cur} flags ${fe_f}; copies valid ${fe_ok0}${fe_ok1})"
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
    # Write the other copy with flags + 1, in the redundant layout.
    setexpr fe_n ${fe_f} + 1
    if test "${fe_n}" = "100"; then setenv fe_n 0; fi
    mw.b ${fe_t} 0 0x4000
    env export -c -s 0x3fff ${fe_t} ${fieldota_vars}
    mw.b ${fe_0} 0 0x4000
    cp.b ${fe_t} ${fe_0} 4
    setexpr fe_s ${fe_0} + 4
    mw.b ${fe_s} ${fe_n} 1
    setexpr fe_s ${fe_0} + 5
    setexpr fe_d ${fe_t} + 4
    cp.b ${fe_d} ${fe_s} 0x3ffb
    if test "${fe_cur}" = "0"; then
        fatwrite virtio 0:1 ${fe_0} /uboot-redund.env 0x4000
    else
        fatwrite virtio 0:1 ${fe_0} /uboot.env 0x4000
    fi
fi
if test "${fieldota_slot}" = "a"; then setenv fieldota_part 2; else setenv fieldota_part 3; fi
setenv bootargs "console=ttyAMA0 root=/dev/vda${fieldota_part} fieldota.slot=${fieldota_slot} panic=1 rootwait quiet"
echo "fieldota: booting slot ${fieldota_slot} (virtio 0:${fieldota_part})"
load virtio 0:1 ${kernel_addr_r} /Image
load virtio 0:1 ${ramdisk_addr_r} /initramfs.cpio.gz
booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
# Only reached when the kernel did not start: during a trial, reset so that the next boot counts.
if test "${fieldota_try}" = "1"; then reset; fi
