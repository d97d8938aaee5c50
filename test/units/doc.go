// Package units checks the shipped systemd units (scripts/*.service, *.timer) and the drop-ins
// documented in docs/systemd.md: systemd-analyze verify, and every documented directory against
// the unit's sandbox settings (tests only).
package units
