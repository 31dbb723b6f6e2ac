# Two commands for a fresh machine: `make demo` (the main job on sample_data/) and `make test`.
# Each creates whatever environments are missing first (idempotent).
PY311 ?= $(shell test -x /root/.pyenv/versions/3.11.7/bin/python && echo /root/.pyenv/versions/3.11.7/bin/python || command -v python3.11 || echo python3)
PY312 ?= $(shell test -x /root/.pyenv/versions/3.12.1/bin/python && echo /root/.pyenv/versions/3.12.1/bin/python || command -v python3.12)
VENV ?= .venv
NG_VENV ?= .nemo-gym-venv
PYTEST_ARGS ?=

export GYMVERL_NEMO_GYM_ENV ?= $(abspath $(NG_VENV))

.PHONY: setup demo test clean-env

# gymverl: Python 3.11. torch first, from the CPU wheel (never let pip pull a CUDA build); then
# VeRL without extras (its extras pin another torch).
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY311) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[verl,test,plot]'
	touch $@

# NeMo Gym: Python >= 3.12, its own venv; `uv` because ng_run builds one venv per server.
$(NG_VENV)/.installed:
	test -x $(NG_VENV)/bin/python || $(PY312) -m venv $(NG_VENV)
	$(NG_VENV)/bin/pip install -q nemo-gym==0.4.0 uv
	touch $@

# ng_run builds one venv per NeMo Gym server on first start (from the package registry); do it
# once here so the demo and the tests start fast.
$(NG_VENV)/.servers-built: $(VENV)/.installed $(NG_VENV)/.installed
	$(VENV)/bin/python -m gymverl.nemo_gym --warmup math_with_judge xlam_fc mcqa
	touch $@

setup: $(VENV)/.installed $(NG_VENV)/.installed $(NG_VENV)/.servers-built

demo: setup
	$(VENV)/bin/gymverl demo

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV) $(NG_VENV)
