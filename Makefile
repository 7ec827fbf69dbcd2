# attitude: an SMTP proxy with an attitude.
#   make run    build, start `attitude sink` on 127.0.0.1:2526 and attitude in front of it on 127.0.0.1:2525
#   make test   install what the tests need (make deps), then formatting, lints and every test
#   make release the release binary, target/release/attitude (what deploy/Dockerfile runs)
#   make deb    the Debian package, target/debian/attitude_<version>_<arch>.deb (docs/install.md)
#   make bench  release build against smtp-sink, HAProxy, nginx and Postfix's proxy (../shared/bench), idle memory (checked), a BDAT row, charts
#   make bench-flood  the DoS scenario (../shared/bench/flood.sh) in hold and slow modes (REDIS=1: limits in Redis)
#   make bench-limits what the limit stack costs: limits on vs off, then limits in Redis vs in the process, same build, same run
#   make bench-policies what the filtering policies cost: policies on vs off (local DNS server)
#   make bench-scan  what ClamAV and rspamd add: 1 KB and 100 KB, each engine on/off, against the engines alone
#   make bench-milter what a milter costs: opendkim signing in attitude and in Postfix (smtpd_milters), 1 KB and 100 KB
#   make bench-ab BASE=BIN  this tree against another build (scripts/ab-build.sh): 1 KB and 100 KB, new and reuse, idle memory
#   make fuzz   a fuzz target (FUZZ_TARGET=decode|reply|milter) for FUZZ_SECONDS (needs `cargo install cargo-fuzz`)

SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 127.0.0.1:2525
SINK ?= 127.0.0.1:2526
ADMIN ?= 127.0.0.1:9325

.PHONY: run deps test lint unit build release deb bench bench-ab bench-flood bench-limits bench-policies bench-scan bench-milter fuzz clean

run:
	$(CARGO) build --release -p attitude
	@set -e; \
	target/release/attitude sink --listen $(SINK) & sink=$$!; \
	trap 'kill $$sink 2>/dev/null; wait $$sink 2>/dev/null' EXIT INT TERM; \
	echo; \
	echo "attitude on $(LISTEN) -> sink on $(SINK); metrics on http://$(ADMIN)/metrics"; \
	echo "try:  swaks --server $(LISTEN) --from you@example.org --to someone@example.com"; \
	echo "stop: Ctrl-C"; \
	echo; \
	target/release/attitude serve --listen $(LISTEN) --backend $(SINK) --admin $(ADMIN)

deps:
	bash scripts/deps.sh

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --locked -p attitude

deb:
	bash scripts/deb.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 scripts/module-cycles.py
	@long=$$(find crates -path '*/src/*.rs' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 600 {print $$2 " (" $$1 " lines)"}'); \
	if [ -n "$$long" ]; then echo "files over 600 lines, split them: $$long"; exit 1; fi

unit: build deb
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

test: deps lint unit

bench:
	bash scripts/bench.sh

bench-ab:
	bash scripts/ab-build.sh $(BASE)

bench-flood:
	bash scripts/flood.sh

bench-limits:
	bash scripts/ab-cost.sh deploy/bench/limits-on.toml deploy/bench/limits-off.toml
	bash scripts/fleet-cost.sh

bench-policies:
	bash scripts/policies-cost.sh

bench-scan:
	bash scripts/scan-cost.sh

bench-milter:
	bash scripts/milter-cost.sh

# New inputs go to a scratch corpus; the committed seeds in corpus/decode are only read.
# A crash lands in crates/codec/fuzz/artifacts/: copy it into corpus/decode as a regression test.
# FUZZ_TARGET: decode (what a client sends, the session's decoder), reply (what a backend
# sends, the backend connections' reply reader) or milter (what a milter sends, the milter
# client's reply parser: crates/engines/fuzz).
FUZZ_CORPUS ?= /tmp/attitude-fuzz-corpus
FUZZ_TARGET ?= decode
FUZZ_CRATE = $(if $(filter milter,$(FUZZ_TARGET)),engines,codec)
fuzz:
	mkdir -p $(FUZZ_CORPUS)/$(FUZZ_TARGET)
	cd crates/$(FUZZ_CRATE)/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $(FUZZ_TARGET) $(FUZZ_CORPUS)/$(FUZZ_TARGET) corpus/$(FUZZ_TARGET) -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean
