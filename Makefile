# Everyday commands. `make test` works on a fresh clone with only Python 3.11+ and a C compiler:
# it creates .venv, installs exactly the versions of requirements.lock (every package of the
# runtime, the test and bench extras and the build), builds the Cython extensions and runs the
# suite. `make lock` refreshes the lock from the ranges in pyproject.toml; `make test-latest`
# tries the newest releases those ranges admit, in a throwaway copy.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The lock is written by uv (`uv pip compile`), installed by plain pip: a fresh machine needs
# nothing but Python. uv itself is pinned here, so refreshing the lock is repeatable too.
UV_VERSION := 0.13.9
TOOLS := .tools/uv
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*.pxi)
PROTO_SOURCES := $(wildcard proto/loyalty/v1/*.proto)
# [build-system].requires of pyproject.toml, one per line, for the lock and test-latest.
BUILD_REQUIRES = $(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\\n')"

.DEFAULT_GOAL := test
.PHONY: install test test-latest lock build proto lint run bench bench-engine clean distclean

install: $(STAMP)

# Reinstalls only when the lock, the packaging or the Cython sources change; edits to Python
# files are live through the editable install. Every package, pip and the build requirements
# included, comes from the lock with its hashes (--no-deps: the lock is the whole set); the
# project itself installs without build isolation, so `make build` rebuilds with the very
# same Cython. The editable install builds the compiled modules in place, beside the sources
# in processor/; the import check after it makes sure they landed where Python finds them.
# (setuptools warns about every editable install of a flat layout like this one; it is
# expected here, so it is not printed.)
$(STAMP): $(LOCK) pyproject.toml setup.py $(EXT_SOURCES) $(PROTO_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import processor._calendar, processor._engine, processor._arrays, processor._codec, processor._answers, processor._admission, loyalty.v1.transactions_pb2_grpc"
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Refresh the lock to the newest releases the ranges of pyproject.toml admit, for every
# platform and Python 3.11+ (`--universal`). Upgrading is deliberate: run this, then `make
# test`, and commit requirements.lock on its own. UPGRADE_ARGS='--upgrade-package redis'
# moves one package only; with no argument, every package moves.
lock: $(TOOLS)/bin/uv
	$(BUILD_REQUIRES) > .tools/build-requirements.txt
	echo pip >> .tools/build-requirements.txt
	$(TOOLS)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--extra test --extra bench $(or $(UPGRADE_ARGS),--upgrade) \
		--custom-compile-command 'make lock' --output-file $(LOCK) \
		pyproject.toml .tools/build-requirements.txt

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

# The suite against the newest releases the ranges admit, not the lock: a throwaway copy of
# the tracked files in .latest/ with a venv of its own, so an upstream break is met on purpose.
# It leaves .venv and the extensions built in place alone. Not part of `make test`.
test-latest:
	rm -rf .latest && mkdir -p .latest/src
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t .latest/src
	cd .latest/src && $(PYTHON) -m venv .venv \
		&& .venv/bin/python -m pip install --quiet --upgrade pip \
		&& $(BUILD_REQUIRES) > .venv/build-requirements.txt \
		&& .venv/bin/python -m pip install --quiet --upgrade -r .venv/build-requirements.txt \
		&& .venv/bin/python -m pip install --quiet --upgrade --no-build-isolation -e '.[test,bench]' \
		&& .venv/bin/python -m pip freeze --exclude-editable > ../installed.txt \
		&& LOYALTY_TEST_LATEST=1 .venv/bin/python -m pytest $(PYTEST_ARGS)

# Rebuild the extensions in place after editing ext/ (LOYALTY_CYTHON_ANNOTATE=1 or
# LOYALTY_CYTHON_TRACE=1 in the environment switch on annotation or line tracing).
build: $(STAMP)
	$(BIN)/python setup.py build_ext --inplace

# Regenerate loyalty/v1 from proto/ after editing a .proto file.
proto: $(STAMP)
	$(BIN)/python setup.py build_proto

# A short complete load test (about 4 minutes): seeding, the transport ceiling, a durable
# batched and streamed run, a 60-second locust run and the SLA gate; reports in bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

bench-engine: $(STAMP)
	$(BIN)/python bench/engine_bench.py

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy processor

run: $(STAMP)
	$(BIN)/loyalty serve --demo

# Removing the stamp too makes the next `make test` rebuild the extensions it deletes.
clean:
	rm -rf build dist *.egg-info processor/*.so ext/*.c ext/*.html loyalty $(STAMP)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .latest .tools/uv
