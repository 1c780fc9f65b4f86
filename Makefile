# hvsim: `make run` boots a default simulated host, `make test` runs the test suite.
# Both create (or reuse) .venv and install what they need; nothing else is assumed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORE   := hypervisor/.core-built
NATIVE := $(wildcard native/*.c native/*.h native/api/*.h) native/build_core.py
ARGS   ?=

.PHONY: run test bench sanitize clean core tools fuzz soak guests

run: $(CORE) guests
	$(VENV)/bin/hvsim run $(ARGS)

# Reference tools the interoperability tests compare against (Debian packages, installed if missing).
TOOLS := qemu-img:qemu-utils qemu-io:qemu-utils tshark:tshark chromium:chromium

test: $(CORE) guests
	sh tools/ensure-debian-packages $(TOOLS)
	$(PY) -m pytest $(ARGS)

# Every benchmark beside its goal, median (min-max) of 3 runs (docs/benchmarks.md); for example
# ARGS="hypercalls channel --repeat 5 --size long".
bench: $(CORE)
	$(PY) -m bench $(ARGS)

# The core and the whole test suite under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: $(STAMP)
	$(PY) native/build_core.py --sanitize
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	HVSIM_SANITIZE=1 $(PY) -m pytest -p no:cacheprovider $(ARGS)

# Coverage-guided fuzzing (fuzz/, docs/fuzzing.md): libFuzzer for the C core, atheris for the
# Python parsers, every target for FUZZ_SECONDS (or FUZZ_RUNS executions), FUZZ_JOBS at a time.
FUZZ_SECONDS ?= 60
FUZZ_RUNS    ?=
FUZZ_JOBS    ?= $(shell nproc)
FUZZ_TARGETS ?=
FUZZ_EXTRA   := $(VENV)/.fuzz-installed

fuzz: $(CORE) $(FUZZ_EXTRA)
	sh tools/ensure-debian-packages clang:clang
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS)) --jobs $(FUZZ_JOBS) $(FUZZ_TARGETS)

# The `fuzz` extra of pyproject.toml, installed alone (not the package again: that would rebuild the core).
$(FUZZ_EXTRA): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check $$($(PY) -c "import tomllib; \
		print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['fuzz'])")
	touch $@

# Long runs of the stateful isolation machines and a fault campaign over whole hosts (bench/soak.py,
# docs/fuzzing.md): SOAK_STEPS machine steps in all, SOAK_JOBS processes, SOAK_HOSTS campaign hosts.
SOAK_STEPS ?= 1000000
SOAK_JOBS  ?= $(shell nproc)
SOAK_HOSTS ?= 20
SOAK_SEED  ?=

soak: $(CORE)
	$(PY) -m bench.soak --steps $(SOAK_STEPS) --jobs $(SOAK_JOBS) --hosts $(SOAK_HOSTS) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

core: $(CORE)

# The guest SDK's example kernels (native/guest/, docs/native-guests.md): native/guest/build/*.elf.
guests:
	$(MAKE) -s -C native/guest

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench,native,service,browser]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import cffi, pytest, hypothesis, msgpack, structlog, rich, unicorn, fastapi, uvicorn, playwright"
	touch $@

$(CORE): $(STAMP) $(NATIVE)
	rm -f hypervisor/_hvcore.*so
	$(PY) setup.py -q build_ext --inplace 2>&1 | grep -v -e '^WARNING: Location' -e BetaConfiguration -e 'warnings.warn' || true
	$(PY) -c "import hypervisor._binding"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info hypervisor/_hvcore* hypervisor/.core-built native/*.o native/guest/build
	find . -name __pycache__ -prune -exec rm -rf {} +
