//go:build fault_durable_nofilesync

package durable

// Fault-injection build for the power-loss harness (test/device TestPowerLossHarnessIsNotBlind,
// docs/power-loss.md): Write renames its temp file into place without fsyncing it first, so
// after a power cut a file created by the rename may be found empty (ext4 allocates delayed
// blocks only at writeback). Never built into a release.
const syncBeforeRename = false
