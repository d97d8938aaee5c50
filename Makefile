# fieldota — see README.md. Every target works on a fresh Debian machine with Go installed.
GO        ?= go
BIN       ?= bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
PKGS      := ./...
# The agent never speaks HTTP/2 (S3 and its presigned URLs serve HTTP/1.1, paho dials MQTT itself):
# leaving net/http's bundled HTTP/2 out takes 348 KB and a second HTTP parser off the device.
AGENT_TAGS := nethttpomithttp2
# Fuzz targets run briefly on every `make test`: name them here as package:FuzzName.
# An execution count, not a duration: with -fuzztime 5s Go's fuzzer sometimes fails with
# "context deadline exceeded" when the time runs out while it minimizes a new input (seen in CI).
FUZZTIME  ?= 50000x
FUZZ      ?= ./ota/jobdoc:FuzzParseDocument ./verify:FuzzParseSignature ./verify:FuzzParseEnvelope ./verify:FuzzParseVersion ./test/jobsim:FuzzDeviceRequest ./agent/jobs:FuzzInbound

.PHONY: all build build-pkcs11 test unit fuzz lint demo bench deps clean test-device test-powercut

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/fieldota
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(AGENT_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/fieldota-agent

# The agent with PKCS#11 identity keys (docs/device-identity.md): cgo, dynamically linked, so a
# binary of its own; the default build above stays static and cgo-free (TPM keys included).
build-pkcs11:
	CGO_ENABLED=1 $(GO) build -trimpath -tags 'pkcs11 $(AGENT_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/fieldota-agent-pkcs11 ./cmd/fieldota-agent

deps:
	scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	CGO_ENABLED=1 $(GO) vet -tags pkcs11 ./agent/identity/ ./cmd/fieldota-agent/
	$(GO) vet -tags device ./test/device/   # built only by make test-device: vet it here so it never rots

# The whole suite: lint, every package under the race detector (end-to-end tests included: they
# start the emulator, mosquitto and the real Debian tools themselves), then the fuzz targets.
test: deps lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	CGO_ENABLED=1 $(GO) test -race -count=1 -tags pkcs11 ./agent/identity/

fuzz:
	@for f in $(FUZZ); do pkg=$${f%%:*}; name=$${f##*:}; \
	  echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

demo: build
	$(BIN)/fieldota demo

# The downloader benchmark, then the compressed/delta one (root: it builds Debian images with
# debootstrap; cached under ~/.cache/fieldota-bench). Both write BENCHMARKS.md.
bench:
	$(GO) run ./test/bench
	$(GO) run ./test/bench/fleet
	scripts/bench-deps.sh
	$(GO) run ./test/bench/delta

# The A/B story on an emulated arm64 board (QEMU TCG + Debian's U-Boot + Linux; test/device,
# docs/device-in-a-box.md): installs the tools and fetches the arm64 packages, then runs it.
test-device:
	scripts/device-deps.sh
	$(GO) test -tags device -count=1 -v -timeout 30m ./test/device/

# Power-loss truth, the whole set (docs/power-loss.md): the board's writes recorded through QEMU's
# blklogwrites, replayed to every flush point and between flushes, every class of states booted
# (about 30 minutes). `make test-device` runs the fixed CI sample of the same tests.
test-powercut:
	scripts/device-deps.sh
	FIELDOTA_POWERCUT=full $(GO) test -tags device -count=1 -v -timeout 90m -run 'TestPowerLoss' ./test/device/

clean:
	rm -rf $(BIN)
