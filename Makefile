# l4lb: `make demo` (first try), `make test` (what CI runs).
CARGO ?= cargo
SCRIPTS := $(wildcard scripts/*.sh) $(wildcard tools/*/*.sh) debian/postinst debian/prerm debian/postrm

.PHONY: all build release test fmt fmt-check clippy shellcheck bench demo demo-run run deb clean

all: build

build:
	$(CARGO) build --release --bins

release: build

## Everything CI runs.
test: fmt-check clippy shellcheck
	$(CARGO) test --all-targets
	# The same UDP behaviour on the epoll path (where io_uring is off or missing).
	L4LB_IO_URING=off $(CARGO) test --test udp --test cpu_group

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

shellcheck:
	@if [ -n "$(SCRIPTS)" ]; then \
		for s in $(SCRIPTS); do bash -n "$$s" || exit 1; done; \
		if command -v shellcheck >/dev/null 2>&1; then shellcheck $(SCRIPTS); \
		else echo "shellcheck not installed: only bash -n ran"; fi; \
	fi

bench:
	$(CARGO) bench

## Run the balancer in front of three demo backends and load-test it.
demo: build demo-run

## The demo without the build step (tests run it with their own binaries: L4LB_BIN=...).
demo-run:
	bash scripts/demo.sh

## Run the balancer on the documented example config.
run: build
	./target/release/l4lb --config conf/l4lb.toml

## A Debian package in target/debian/ (cargo-deb, installed from crates.io when missing).
deb:
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install --locked cargo-deb
	$(CARGO) deb

clean:
	$(CARGO) clean
