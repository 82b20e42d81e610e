# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
COMPAT := .venv-compat
APPLIO := .venv-applio
BIN := $(VENV)/bin

.PHONY: demo test lint venv compat clean system

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

# Applio (offline and realtime) pins faiss-cpu 1.14.3: the consumer matrix replays its calls there too.
compat: $(APPLIO)/.installed
$(APPLIO)/.installed:
	$(PYTHON) -m venv $(APPLIO)
	$(APPLIO)/bin/pip install --quiet "faiss-cpu==1.14.3"
	touch $@

demo: venv
	$(BIN)/rvc-index demo

# Debian packages some tests use, installed here as root with apt; elsewhere those tests skip and say why:
# slurm-wlm + munge for tests/batch/test_slurm.py (a real single-node SLURM, jobs/testing/slurm_up.sh) and
# espeak-ng for the k-means collection computed from real synthesized speech (tools/speechlike.py).
SYSTEM_PACKAGES := slurm-wlm munge espeak-ng
system:
	@if { command -v slurmctld || [ -x /usr/sbin/slurmctld ]; } >/dev/null 2>&1 && command -v espeak-ng >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) || \
		echo "make system: apt-get could not install $(SYSTEM_PACKAGES): the SLURM and speech tests will skip"; \
	else echo "make system: not root or no apt-get: the SLURM and speech tests will skip"; fi

test: venv compat system
	RVC_INDEX_COMPAT_PYTHON=$(abspath $(COMPAT))/bin/python RVC_INDEX_APPLIO_PYTHON=$(abspath $(APPLIO))/bin/python \
		$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) $(APPLIO) demo-data .pytest_cache
