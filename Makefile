# cocoon: `make demo` and `make test` work on a fresh machine (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO       ?= cargo
BUILD       := build
STATIC_TRIPLE := x86_64-unknown-linux-gnu
# crt-static for glibc; libseccomp-sys links libseccomp.so unless told to use
# Debian's libseccomp.a.
STATIC_ENV  := RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
# The guest binaries use the `guest` profile (Cargo.toml: size-optimised).
INIT_BIN    := target/$(STATIC_TRIPLE)/guest/cocoon-boot-init
DEVTEST_BIN := target/$(STATIC_TRIPLE)/guest/cocoon-devtest-init
AGENT_BIN   := target/$(STATIC_TRIPLE)/guest/cocoon-agent
VMM_DEBUG   := target/debug/cocoon-vmm
VMM_RELEASE := target/release/cocoon-vmm

.PHONY: help deps build build-release kernel initrd lint unit cri-tools e2e-build e2e test demo bench fuzz-smoke fuzz clean

help:
	@echo "make demo    install what is missing, build, boot the guest in a cocoon micro-VM"
	@echo "make test    install what is missing, run every test (lint, unit, KVM, end-to-end)"
	@echo "make bench   tables: boot time and RSS vs QEMU microvm, vsock, virtio-fs, ctr run and pod memory vs runc, CRI pod start and pod TCP vs runc, the VMM jail+filters on vs off, agent vs runc"
	@echo "make fuzz-smoke  build the VMM and shim fuzz targets and run each for FUZZ_SECONDS (10; nightly + ASan when available)"
	@echo "make fuzz        the same, 300 s a target (FUZZ_SECONDS)"
	@echo "make deps | build | kernel | initrd | lint | unit | cri-tools | e2e | clean"

deps:
	@scripts/deps.sh
	@scripts/target-cache.sh

build:
	$(CARGO) build --workspace --quiet

build-release:
	$(CARGO) build --release --quiet -p cocoon-vmm -p containerd-shim-cocoon-v2

kernel: deps
	@mkdir -p $(BUILD)
	@k=$$(guest-kernel/build.sh) && ln -sfn "$$k" $(BUILD)/vmlinux

# The guest inits, linked statically, each packed as /init: the boot
# banner init, the test-mode init of the device end-to-end tests, and the
# agent (the production guest).
initrd:
	@mkdir -p $(BUILD)
	$(STATIC_ENV) $(CARGO) build --profile guest --quiet --target $(STATIC_TRIPLE) -p cocoon-boot-init -p cocoon-devtest-init -p cocoon-agent
	rootfs/mkinitrd.py --init $(INIT_BIN) --out $(BUILD)/initrd.cpio
	rootfs/mkinitrd.py --init $(DEVTEST_BIN) --out $(BUILD)/devtest-initrd.cpio
	rootfs/mkinitrd.py --init $(AGENT_BIN) --out $(BUILD)/agent-initrd.cpio

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path vmm/fuzz/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path shim/fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets --features cocoon-e2e/e2e --quiet -- -D warnings

unit:
	python3 -m unittest discover -s rootfs -p 'test_*.py'
	python3 -m unittest discover -s scripts -p 'test_*.py'
	python3 -m unittest discover -s tests/ctr -p 'test_*.py'
	$(CARGO) test --workspace

# crictl and critest for the CRI tests: from PATH, else built once (Go,
# offline) from the cri-tools source tarball into the cache
# (scripts/cri-tools.sh). Here, never in the slow test host; `make test`
# builds them beside the initrd, and tests/run-e2e.sh passes their
# directory on (COCOON_CRI_TOOLS).
cri-tools:
	@scripts/cri-tools.sh >/dev/null

# What the end-to-end tests run (the workspace's binaries, the e2e test
# binaries), built ahead so that `make test` builds them beside the initrd.
e2e-build: build
	@tests/run-e2e.sh --build

# Real-VM tests: directly on VT-x/AMD-V, inside the nested test host on PVM.
e2e: kernel initrd build
	@tests/run-e2e.sh

# lint+unit+e2e-build and initrd+fuzz-smoke(+cri-tools, Go) build in different output
# directories: side by side; then, every build done, the sources they were
# built from are recorded for the next checkout (scripts/target-cache.sh),
# and the end-to-end tests run.
test: deps kernel
	@scripts/side-by-side.sh "lint unit e2e-build" "initrd fuzz-smoke cri-tools"
	@scripts/target-cache.sh record
	@$(MAKE) --no-print-directory e2e
	@echo "make test: all passed ($$(cat $(BUILD)/e2e-summary.txt 2>/dev/null || echo "no e2e summary"))"

demo: deps kernel initrd build-release
	@scripts/demo.sh

bench: deps kernel initrd build-release
	@tests/bench/run.sh

# The cargo-fuzz crates (vmm/fuzz, shim/fuzz; not workspace members): each
# target for a bounded time, crashes fail (scripts/fuzz-smoke.sh).
fuzz-smoke:
	@scripts/target-cache.sh
	@FUZZ_BUILD=$${FUZZ_BUILD:-dev} scripts/fuzz-smoke.sh

fuzz:
	@scripts/target-cache.sh
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz-smoke.sh

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
