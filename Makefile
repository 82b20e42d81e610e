# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
COMPAT := .venv-compat
BIN := $(VENV)/bin

.PHONY: demo test lint venv compat clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	touch $@

# RVC's 20240604 release pins faiss-cpu 1.7.3 (numpy < 2): every index we write must load there.
compat: $(COMPAT)/.installed
$(COMPAT)/.installed:
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install --quiet "faiss-cpu==1.7.3" "numpy<2"
	touch $@

demo: venv
	$(BIN)/rvc-index demo --config configs/tips.yaml

test: venv compat
	RVC_INDEX_COMPAT_PYTHON=$(abspath $(COMPAT))/bin/python $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) demo-data .pytest_cache
