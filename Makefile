# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
COMPAT := .venv-compat
BIN := $(VENV)/bin

.PHONY: demo test lint venv compat clean slurm

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

# tests/test_slurm.py runs jobs/ against a real single-node SLURM (jobs/testing/slurm_up.sh): Debian's
# slurm-wlm and munge, installed here as root with apt; elsewhere those tests skip and say why.
slurm:
	@if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) || \
		echo "make slurm: apt-get could not install slurm-wlm munge: the SLURM tests will skip"; \
	else echo "make slurm: not root or no apt-get: the SLURM tests will skip"; fi

test: venv compat slurm
	RVC_INDEX_COMPAT_PYTHON=$(abspath $(COMPAT))/bin/python $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) demo-data .pytest_cache
