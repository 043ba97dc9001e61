# Local development. `make demo` and `make test` work on a fresh clone: they
# install the AWS emulator (moto server) into .venv when it is missing.

CARGO ?= cargo
FILE ?=
DEFINITION ?=
WORKERS ?= 4
EXPORT ?=
ROWS ?= 100000

export FILE DEFINITION WORKERS EXPORT ROWS

.PHONY: demo test unit lint build clean

## demo: the whole pipeline on a 100k-row sample (or FILE=... DEFINITION=...)
demo:
	$(CARGO) build -p bulk-import-cli
	scripts/with-moto.sh scripts/demo.sh

## test: every test, integration ones against moto server
test:
	$(CARGO) build --workspace --all-targets
	scripts/with-moto.sh $(CARGO) test --workspace

## unit: the tests that need no emulator
unit:
	$(CARGO) test -p bulk-import -p bulk-import-cli

## lint: formatting and clippy
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .demo
