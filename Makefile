# hvsim: `make run` boots a default simulated host, `make test` runs the test suite.
# Both create (or reuse) .venv and install what they need; nothing else is assumed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORE   := hypervisor/.core-built
NATIVE := $(wildcard native/*.c native/*.h native/api/*.h) native/build_core.py
ARGS   ?=

.PHONY: run test bench sanitize clean core tools

run: $(CORE)
	$(VENV)/bin/hvsim run $(ARGS)

# Reference tools the interoperability tests compare against (Debian packages, installed if missing).
TOOLS := qemu-img:qemu-utils qemu-io:qemu-utils tshark:tshark

test: $(CORE)
	sh tools/ensure-debian-packages $(TOOLS)
	$(PY) -m pytest $(ARGS)

bench: $(CORE)
	$(PY) -m bench $(ARGS)

# The core and the whole test suite under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: $(STAMP)
	$(PY) native/build_core.py --sanitize
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	HVSIM_SANITIZE=1 $(PY) -m pytest -p no:cacheprovider $(ARGS)

core: $(CORE)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import cffi, pytest, hypothesis, msgpack, structlog, rich"
	touch $@

$(CORE): $(STAMP) $(NATIVE)
	rm -f hypervisor/_hvcore.*so
	$(PY) setup.py -q build_ext --inplace 2>&1 | grep -v -e '^WARNING: Location' -e BetaConfiguration -e 'warnings.warn' || true
	$(PY) -c "import hypervisor._binding"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info hypervisor/_hvcore* hypervisor/.core-built native/*.o
	find . -name __pycache__ -prune -exec rm -rf {} +
