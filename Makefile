# A thin wrapper over Meson: `make demo` and `make test` are the two commands
# of the README's quick start. Each installs missing Debian packages first.

BUILD ?= build

.PHONY: all deps build demo test bench bench-quick format format-check asan clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=debugoptimized

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

demo: build
	$(BUILD)/dunning demo

test:
	@scripts/deps.sh --with-node
	@scripts/test-all.sh

# The webhook ingestion benchmark (unmapped and mapped, against the b5b08c3
# baseline built beside this commit) and the engine benchmark (1M accounts:
# drift scan vs raw read, RSS, recomputes) and, with --pg, webhook ingest on a
# throwaway PostgreSQL against pgbench; ratios measured in the run.
# bench-quick prints the same ratios in under a minute (once the baseline is
# built and the 20,000-account population generated), noisier.
bench: build
	python3 bench/suite.py --pg --build $(BUILD)

bench-quick: build
	python3 bench/suite.py --quick --build $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@scripts/format-check.sh

clean:
	rm -rf $(BUILD) build-ci build-asan
