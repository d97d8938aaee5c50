#!/usr/bin/env bash
# Builds sigstore's cosign (not packaged in Debian) through the Go module proxy for the interop
# test (test/e2e/cosign_test.go), once, into ${XDG_CACHE_HOME:-~/.cache}/fieldota-cosign/VERSION,
# and prints its path. Concurrent callers wait for one build (flock): .ci/run starts it in the
# background early, and the test then finds it built or waits for it.
set -euo pipefail
version=${1:-v2.4.3}
dir="${XDG_CACHE_HOME:-$HOME/.cache}/fieldota-cosign/$version"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$dir/cosign" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod go install "github.com/sigstore/cosign/v2/cmd/cosign@$version") >&2
	mv "$tmp/cosign" "$dir/cosign"
fi
echo "$dir/cosign"
