#!/usr/bin/env bash
# Generate the signed test fixtures through the fieldota CLI (keygen, sign, job):
#   scripts/gen-fixtures.sh [OUTDIR]      (default: test/fixtures)
# Artifacts are deterministic; keys are reused when OUTDIR already has them (they are TEST keys,
# committed on purpose, never to be trusted by a real device); signatures change on every run
# (ECDSA is randomised). test/fixtures/fixtures_test.go runs this into a temp dir and verifies it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/test/fixtures"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$root" && go build -o "$tmp/fieldota" ./cmd/fieldota)
fo="$tmp/fieldota"

mkdir -p "$out/keys" "$out/artifacts" "$out/jobs"
key() { # name type
	if [ ! -f "$out/keys/$1.key" ]; then
		"$fo" keygen --type "$2" --out "$out/keys/$1" >/dev/null
	fi
}
key test-signing ecdsa-p256
key test-signing-ed25519 ed25519
key test-untrusted ecdsa-p256 # never in a trust store: jobs signed with it must be refused

# --- artifacts (deterministic) ---
cat >"$out/artifacts/install.py" <<'PY'
#!/usr/bin/env python3
"""fieldota test fixture: the files-mode package of the seed's job document."""
import os
import sys

MARKER = "fieldota-fixture-installed"

def main():
    with open(os.path.join(os.getcwd(), MARKER), "w") as f:
        f.write("install.py 1.0\n")
    print("install.py: installed in", os.getcwd())
    return 0

if __name__ == "__main__":
    sys.exit(main())
PY

# A slot image: a one-line header, then zero padding to 4 KiB.
{
	printf 'FIELDOTA-TEST-SLOT-IMAGE version=1.0.0\n'
	head -c 4057 /dev/zero
} >"$out/artifacts/rootfs.img"

# The "binary" for the swap installer: a tiny executable script, so it runs on any architecture.
cat >"$out/artifacts/myapp" <<'SH'
#!/bin/sh
# fieldota test fixture: the binary the swap installer replaces.
case "$1" in
--version) echo "myapp 1.0.0" ;;
--health) exit 0 ;;
*) echo "myapp 1.0.0 running" ;;
esac
SH
chmod 0755 "$out/artifacts/myapp"

# --- detached signatures and attestations (cosign sign-blob / attest-blob formats) ---
"$fo" sign --key "$out/keys/test-signing.key" --version 1.0 --compatible board-rev-c \
	--working-directory /home/ec2-user/JobSampleTesting --package-name install.py --auto-start \
	--predicate-out "$out/artifacts/install.py.pred.json" "$out/artifacts/install.py" 2>/dev/null
"$fo" sign --key "$out/keys/test-signing.key" --version 1.0.0 --compatible board-rev-c --target slot \
	"$out/artifacts/rootfs.img" 2>/dev/null
"$fo" sign --key "$out/keys/test-signing-ed25519.key" --version 1.0.0 --target binary --binary myapp "$out/artifacts/myapp" 2>/dev/null

# --- job documents (placeholders unexpanded, as given to aws iot create-job) ---
s3=https://s3.eu-west-1.amazonaws.com/fieldota-fixtures
"$fo" job --key "$out/keys/test-signing.key" --file "$out/artifacts/install.py" --presign "$s3/install.py" \
	--version 1.0 --compatible board-rev-c --package-name install.py --auto-start \
	--working-directory /home/ec2-user/JobSampleTesting --out "$out/jobs/install-py.json"
"$fo" job --key "$out/keys/test-signing.key" --file "$out/artifacts/install.py" --presign "$s3/install.py" \
	--version 1.0 --package-name install.py --working-directory /home/ec2-user/JobSampleTesting \
	--signature-format freertos --out "$out/jobs/install-py-freertos.json"
"$fo" job --key "$out/keys/test-signing.key" --file "$out/artifacts/rootfs.img" --presign "$s3/rootfs.img" \
	--target slot --version 1.0.0 --compatible board-rev-c --out "$out/jobs/rootfs-slot.json"
"$fo" job --key "$out/keys/test-signing-ed25519.key" --file "$out/artifacts/myapp" --presign "$s3/myapp" \
	--target binary --binary myapp --version 1.0.0 --out "$out/jobs/myapp-binary.json"
"$fo" job --key "$out/keys/test-untrusted.key" --file "$out/artifacts/install.py" --presign "$s3/install.py" \
	--version 1.0 --package-name install.py --working-directory /home/ec2-user/JobSampleTesting \
	--out "$out/jobs/install-py-untrusted.json"

echo "fixtures written to $out"
