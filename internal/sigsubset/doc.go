// Package sigsubset holds the device's signature checks: the verify-only subset of
// github.com/sigstore/sigstore/pkg/signature (and its options and dsse packages) that package
// verify uses, with the same names and behaviour, on the standard library's ECDSA, RSA and
// Ed25519 and on go-securesystemslib/dsse, the DSSE reference implementation sigstore's dsse
// wraps. sigstore's package also carries its algorithm registry, which links the protobuf
// runtime, genproto and go-containerregistry: 1.97 MB of the agent (BENCHMARKS.md, "Agent
// binary"). Signing stays on sigstore itself (verify/sign, the CLI), and the tests here check
// every verifier against signatures sigstore made.
package sigsubset
