# Everyday commands. `make test` works on a fresh clone with only Python 3.11+ and a C compiler:
# it creates .venv, installs the package (building the Cython extensions) and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*.pxi)
PROTO_SOURCES := $(wildcard proto/loyalty/v1/*.proto)

.DEFAULT_GOAL := test
.PHONY: install test build proto lint run bench bench-engine clean distclean

install: $(STAMP)

# Reinstalls only when the packaging or the Cython sources change; edits to Python files are
# live through the editable install. The build requirements go into .venv as well and the
# install runs without build isolation, so `make build` rebuilds with the very same Cython.
# The editable install builds the compiled modules in place, beside the sources in processor/;
# the import check after it makes sure they landed where the import system finds them.
$(STAMP): pyproject.toml setup.py $(EXT_SOURCES) $(PROTO_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\\n')" > $(VENV)/build-requirements.txt
	$(BIN)/python -m pip install --upgrade -r $(VENV)/build-requirements.txt
	$(BIN)/python -m pip install --no-build-isolation -e '.[test]'
	$(BIN)/python -c "import processor._calendar, processor._engine, loyalty.v1.transactions_pb2_grpc"
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	$(BIN)/python -c "import locust" 2>/dev/null || $(BIN)/python -m pip install --no-build-isolation -e '.[bench]'
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
	rm -rf $(VENV)
