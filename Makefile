# Local development. `make demo` and `make test` work on a fresh clone: they
# install the AWS emulator (moto server) into .venv when it is missing, and
# the deploy tools (cargo-lambda, cfn-lint, the SAM translator) the same way.
# Deploying: `make build` then `sam deploy --guided` (docs/deploy.md).

CARGO ?= cargo
FILE ?=
DEFINITION ?=
ROUTES ?=
WORKERS ?= 4
EXPORT ?=
ROWS ?= 20000
# PROFILE=release builds the demo optimized (slower to build, faster to run).
PROFILE ?= debug

export FILE DEFINITION ROUTES WORKERS EXPORT ROWS

.PHONY: demo test unit lint check build build-check lint-template api-schema chaos bench bench-cpu bench-hotspots bench-prepare bench-scale bench-throttle bench-keyed bench-processors simulate simulate-sweep demo-conflicts fuzz \
	invoke-orchestrator invoke-worker invoke-sweeper clean

## demo: the whole pipeline on a 20k-row sample (or FILE=... DEFINITION=...)
demo:
	$(CARGO) build -p bulk-import-cli $(if $(filter release,$(PROFILE)),--release)
	BULKIMPORT=target/$(PROFILE)/bulkimport scripts/with-moto.sh scripts/demo.sh

## test: check, then every test, integration ones against moto server
test: check
	$(CARGO) build --workspace --all-targets
	scripts/with-moto.sh .venv/bin/python scripts/test_moto_server.py
	.venv/bin/python scripts/test_lambda_standin.py
	.venv/bin/python scripts/test_bedrock_standin.py
	scripts/with-moto.sh scripts/api-schema.sh
	scripts/with-moto.sh $(CARGO) test --workspace

## api-schema: generated requests (schemathesis) against the API function over HTTP, checked against docs/openapi.yaml
api-schema:
	scripts/with-moto.sh scripts/api-schema.sh

## chaos: the chaos test at full size: 50k rows, 8 worker processes, 40 SIGKILLs, injected faults
chaos:
	$(CARGO) build --workspace --all-targets
	CHAOS_ROWS=50000 CHAOS_KILLS=40 scripts/with-moto.sh $(CARGO) test -p integration-tests --test chaos -- --nocapture

## bench-cpu: CPU cost of parsing, validation and packing in MB/s, beside a bare csv-core scan (criterion, release, one core)
bench-cpu:
	$(CARGO) bench -p bulk-import --bench records

## bench: the same as bench-cpu; `make demo` prints end-to-end figures
bench: bench-cpu

## bench-hotspots: a job of 1,000 batches through a write ledger: hottest item and partitions, writes per batch
bench-hotspots:
	$(CARGO) build -p integration-tests --bin hotspots
	scripts/with-moto.sh target/debug/hotspots

## bench-prepare: prepare alone, one batch write at a time vs pipelined, with 10 ms a request (PREPARE_BENCH_ROWS)
PREPARE_BENCH_ROWS ?= 100000
bench-prepare:
	$(CARGO) build --release -p bulk-import-cli -p integration-tests --bin bulkimport --bin prepare-bench
	target/release/bulkimport generate target/bench-users.csv --rows $(PREPARE_BENCH_ROWS)
	MOTO_LATENCY_MS=10 scripts/with-moto.sh target/release/prepare-bench target/bench-users.csv

## bench-scale: the orchestrator alone on a generated 1 GiB CSV: records/s and peak RSS (SCALE_BENCH_MB; the allocator set as template.yaml sets it)
SCALE_BENCH_MB ?= 1024
bench-scale:
	$(CARGO) build --release -p bulk-import-cli -p integration-tests --bin bulkimport --bin scale-bench
	target/release/bulkimport generate target/scale-users.csv --rows $$(( $(SCALE_BENCH_MB) * 1048576 / 88 ))
	MIMALLOC_PURGE_DELAY=10 scripts/with-moto.sh target/release/scale-bench target/scale-users.csv

## bench-throttle: one job uncapped, then capped at 200 write units/s (maxWriteUnitsPerSecond), 8 workers: write units per second, requests the cap adds
bench-throttle:
	$(CARGO) build -p integration-tests --bin throttle-bench
	scripts/with-moto.sh $${CARGO_TARGET_DIR:-target}/debug/throttle-bench

## bench-keyed: one file with repeated keys, 4 workers: requests and write units per record of onDuplicateKey last and first against an unconditional upsert (KEYED_BENCH_ROWS)
bench-keyed:
	$(CARGO) build --release -p integration-tests --bin keyed-bench
	scripts/with-moto.sh $${CARGO_TARGET_DIR:-target}/release/keyed-bench

## bench-processors: one job of each processor type (the example definitions), with the Lambda and Bedrock stand-ins: requests a record counted on the wire, cost per million records (PROCESSORS_BENCH_ROWS)
bench-processors:
	$(CARGO) build --release -p integration-tests --bin processors-bench
	scripts/with-moto.sh $${CARGO_TARGET_DIR:-target}/release/processors-bench

## simulate: the real handlers on a simulated AWS in virtual time (no emulator): a fleet of workers on one job, invariants checked, figures printed (ARGS="--workers 300 --records 10000000 --crash 0.01 ...", see --help)
ARGS ?= --workers 100 --records 1000000
simulate:
	$(CARGO) build --release -p integration-tests --bin simulate
	$${CARGO_TARGET_DIR:-target}/release/simulate $(ARGS)

## simulate-sweep: SEEDS small worlds with every fault on, each checked; prints the command that replays a failing seed
SEEDS ?= 10000
simulate-sweep:
	$(CARGO) build --release -p integration-tests --bin simulate
	$${CARGO_TARGET_DIR:-target}/release/simulate --small --seeds $(SEEDS)

## demo-conflicts: the demo twice, DynamoDB conflict emulation off then on, times side by side
demo-conflicts:
	$(CARGO) build -p bulk-import-cli $(if $(filter release,$(PROFILE)),--release)
	BULKIMPORT=target/$(PROFILE)/bulkimport scripts/demo-conflicts.sh

## fuzz: fuzz the streaming parser and validator (FUZZ_SECONDS=600; installs cargo-fuzz; the corpus is replayed by `make test`)
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -a parse_and_validate -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=24576 -len_control=0 -timeout=10

## unit: the tests that need no emulator
unit:
	$(CARGO) test -p bulk-import -p bulk-import-cli

## lint: formatting and clippy
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## check: lint, lint-template and build-check
check: lint lint-template build-check

## build: release Lambda packages in target/lambda/<fn>/ for sam deploy (DEFINITION=... to bundle another definition, ROUTES=... a routes file)
build:
	BUILD_PROFILE=release scripts/build.sh

## build-check: the same packages in debug mode, into target/lambda-debug/ (fast: for the host, a plain cargo build the tests reuse; never what gets deployed)
build-check:
	BUILD_PROFILE=debug scripts/build.sh

## lint-template: cfn-lint template.yaml, and again after the SAM transform; the IAM check; checkov on both
lint-template:
	scripts/lint-template.sh

## invoke-orchestrator: cargo lambda invoke the orchestrator on a sample upload, then on a prepare-queue message for its job, against moto
invoke-orchestrator:
	$(CARGO) build -p bulk-import-cli
	scripts/with-moto.sh scripts/invoke.sh orchestrator

## invoke-worker: the orchestrator, then the worker on the fan-out messages until the job ends
invoke-worker:
	$(CARGO) build -p bulk-import-cli
	scripts/with-moto.sh scripts/invoke.sh worker

## invoke-sweeper: the orchestrator, then a scheduled sweep (no worker ran)
invoke-sweeper:
	$(CARGO) build -p bulk-import-cli
	scripts/with-moto.sh scripts/invoke.sh sweeper

## clean: cargo clean (target/, Lambda packages included) and the demo files
clean:
	$(CARGO) clean
	rm -rf .demo
