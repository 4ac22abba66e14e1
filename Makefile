# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A separate environment with the real flashbax library (JAX), only for the tests that read vaults
# it writes: flashbax needs an ml-dtypes newer than TensorFlow 2.14 allows, so it cannot share .venv.
FLASHBAX_VENV := .venv-flashbax
FLASHBAX_STAMP := $(FLASHBAX_VENV)/.installed

.PHONY: demo test install lint bench lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(FLASHBAX_STAMP): tests/flashbax/requirements.txt
	test -x $(FLASHBAX_VENV)/bin/python || $(PYTHON) -m venv $(FLASHBAX_VENV)
	$(FLASHBAX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLASHBAX_VENV)/bin/python -m pip install --quiet -r tests/flashbax/requirements.txt
	touch $(FLASHBAX_STAMP)

$(FLASHBAX_VENV): $(FLASHBAX_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ovmse demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) $(FLASHBAX_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/ovmse bench all

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(FLASHBAX_VENV) .pytest_cache .ruff_cache
