# A thin wrapper over Meson: `make demo` and `make test` are the two commands
# of the README's quick start. Each installs missing Debian packages first.

BUILD ?= build

.PHONY: all deps build demo test bench format format-check asan clean

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

# The engine benchmark (1M accounts: drift scan vs raw read, RSS, recomputes)
# and the webhook ingestion benchmark; both print ratios measured in the run.
bench: build
	bench/run.sh
	python3 bench/webhook_bench.py --build $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@scripts/format-check.sh

clean:
	rm -rf $(BUILD) build-ci build-asan
