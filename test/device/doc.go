// Package device runs the A/B story on an emulated arm64 board: QEMU (TCG) boots Debian's
// u-boot-qemu, whose boot script picks a slot from an env file on the FAT boot partition; Debian's
// cloud arm64 kernel and a busybox initramfs switch_root into the slot; the slot's init runs the
// real fieldota-agent (linux/arm64), which talks to `fieldota sim` on the host through QEMU user
// networking, writes the inactive partition, sets the trial boot with the real fw_setenv and
// reboots for real. build-image.sh makes the images from Debian packages only
// (scripts/device-deps.sh fetches them); docs/device-in-a-box.md describes it all.
//
// The tests run only with the build tag: go test -tags device ./test/device (or make test-device).
package device
