# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A separate environment with the real flashbax library (JAX), only for the tests that read vaults
# it writes: flashbax needs an ml-dtypes newer than TensorFlow 2.14 allows, so it cannot share .venv.
FLASHBAX_VENV := .venv-flashbax
FLASHBAX_STAMP := $(FLASHBAX_VENV)/.installed
# Another, with the real mpe2 package (its own gymnasium/pettingzoo/pygame-ce), only for the tests
# that check the particle world against it.
MPE2_VENV := .venv-mpe2
MPE2_STAMP := $(MPE2_VENV)/.installed

.PHONY: demo test install lint bench lock clean mutate

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m common.kernels
	touch $(STAMP)

$(FLASHBAX_STAMP): tests/flashbax/requirements.txt
	test -x $(FLASHBAX_VENV)/bin/python || $(PYTHON) -m venv $(FLASHBAX_VENV)
	$(FLASHBAX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLASHBAX_VENV)/bin/python -m pip install --quiet -r tests/flashbax/requirements.txt
	touch $(FLASHBAX_STAMP)

$(FLASHBAX_VENV): $(FLASHBAX_STAMP)

$(MPE2_STAMP): tests/mpe2/requirements.txt
	test -x $(MPE2_VENV)/bin/python || $(PYTHON) -m venv $(MPE2_VENV)
	$(MPE2_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MPE2_VENV)/bin/python -m pip install --quiet -r tests/mpe2/requirements.txt
	touch $(MPE2_STAMP)

$(MPE2_VENV): $(MPE2_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ovmse demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) $(FLASHBAX_STAMP) $(MPE2_STAMP)
	$(BIN)/ruff check .
	# The in-process modules (tests/conftest.py) on two workers, then the live ones one at a time.
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m in_process --durations=10
	$(BIN)/python -m pytest -q -m "not in_process" --durations=25

# Mutation testing of the core pure modules ([tool.mutmut] in pyproject.toml; docs/testing.md).
# Slow (tens of minutes on two cores), so not part of `make test` or CI. JOBS=N sets the workers.
mutate: $(STAMP)
	env -u PYTHONPATH OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(or $(JOBS),2)
	$(BIN)/mutmut export-cicd-stats
	$(BIN)/python -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
		print('killed', s['killed'], 'of', s['total'], 'survived', s['survived'])"
	$(BIN)/mutmut results

bench: $(STAMP)
	$(BIN)/ovmse bench all

# --all keeps the setuptools pin (plain freeze leaves setuptools out); pip itself is not pinned.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/+cpu$$//' \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(FLASHBAX_VENV) $(MPE2_VENV) .pytest_cache .ruff_cache mutants
