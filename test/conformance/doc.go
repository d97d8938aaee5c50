// Package conformance holds the conformance suite of the device-side Jobs client (agent/jobs)
// against the AWS IoT Jobs emulator (test/jobsim): one table of cases, each run through the real
// paho-based client, once against the emulator's embedded broker (plain TCP and mutual TLS) and
// once with the emulator attached to Debian's mosquitto (TLS client certificates, per-thing ACL).
// The package has no non-test code.
package conformance
