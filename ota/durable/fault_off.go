//go:build !fault_durable_nofilesync

package durable

// syncBeforeRename is false only in the fault-injection build of the power-loss tests
// (docs/power-loss.md), which must see what a missing fsync does.
const syncBeforeRename = true
