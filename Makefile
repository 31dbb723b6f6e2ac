# Two commands for a fresh machine: `make demo` (the main job on sample_data/) and `make test`.
# Each creates whatever environments are missing first (idempotent).
#
# NeMo Gym lives in its own venv (gymverl talks to it over HTTP and subprocesses only: VeRL needs
# Python < 3.13, nemo-gym >= 0.5 needs >= 3.13.14). NEMO_GYM chooses the release:
#   make setup                    nemo-gym 0.7.0 (default) in .nemo-gym-venv, Python 3.13
#   make setup NEMO_GYM=0.4.0     nemo-gym 0.4.0 in .nemo-gym-0.4-venv, Python 3.12
#   make test-nemo-gym-0.4        the tests that start real servers, against 0.4.0
PYENV_ROOT ?= /root/.pyenv
PY311 ?= $(shell test -x $(PYENV_ROOT)/versions/3.11.7/bin/python && echo $(PYENV_ROOT)/versions/3.11.7/bin/python || command -v python3.11 || echo python3)
PY312 ?= $(shell test -x $(PYENV_ROOT)/versions/3.12.1/bin/python && echo $(PYENV_ROOT)/versions/3.12.1/bin/python || command -v python3.12)
# The newest Python 3.13 there is (pyenv's or the one on PATH): nemo-gym 0.7.0 wants >= 3.13.14.
ifndef PY313
PY313 := $(shell for p in $$(command -v python3.13) $(PYENV_ROOT)/versions/3.13*/bin/python; do \
	test "$${p#*/shims/}" = "$$p" || continue; \
	test -x "$$p" && echo "$$("$$p" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') $$p"; \
	done 2>/dev/null | sort -s -V -k1,1 | tail -n 1 | cut -d' ' -f2)
endif
VENV ?= .venv
NEMO_GYM ?= 0.7.0
NG04_VENV ?= .nemo-gym-0.4-venv
ifeq ($(NEMO_GYM),0.4.0)
NG_VENV ?= $(NG04_VENV)
NG_PYTHON ?= $(PY312)
NG_MIN_PYTHON ?= 3.12.0
else
NG_VENV ?= .nemo-gym-venv
NG_PYTHON ?= $(PY313)
NG_MIN_PYTHON ?= 3.13.14
endif
# The resources servers the tests and the demo start; their requirements.txt go into NG_VENV.
NG_SERVERS ?= math_with_judge xlam_fc mcqa
PYTEST_ARGS ?=
# The subset run against nemo-gym 0.4.0: every test that starts a real NeMo Gym server.
NG04_PYTEST_ARGS ?= -m nemo_gym

export GYMVERL_NEMO_GYM_ENV ?= $(abspath $(NG_VENV))

.PHONY: setup demo test test-nemo-gym-0.4 clean-env

# gymverl: Python 3.11. torch first, from the CPU wheel (never let pip pull a CUDA build); then
# VeRL without extras (its extras pin another torch).
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY311) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[verl,test,plot]'
	touch $@

# NeMo Gym: its own venv, one stamp per release. A venv of another Python minor (e.g. an old 0.4.0
# .nemo-gym-venv on 3.12) is made again. When the Python is older than nemo-gym's Requires-Python
# (0.7.0: >= 3.13.14; pyenv has 3.13.0 at most here) pip is told to ignore that: nemo-gym runs on
# it, but NeMo Gym's per-server uv venvs cannot be built (uv re-checks), so gymverl runs every
# server from this one venv (gymverl/ng_setup.py) and the servers' own requirements.txt (minus
# the line that installs nemo-gym from `../..`, as NeMo Gym does) are installed here too.
# `uv`: NeMo Gym builds per-server venvs with it where the Python is new enough.
$(NG_VENV)/.installed-$(NEMO_GYM):
	@test -n "$(NG_PYTHON)" || { echo "no Python for nemo-gym $(NEMO_GYM) (set NG_PYTHON=...)"; exit 2; }
	@want=$$($(NG_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if test -x $(NG_VENV)/bin/python && test "$$($(NG_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$$want"; then \
		echo "$(NG_VENV) has another Python than $$want: making it again"; rm -rf $(NG_VENV); fi
	test -x $(NG_VENV)/bin/python || $(NG_PYTHON) -m venv $(NG_VENV)
	$(NG_VENV)/bin/pip install -q --upgrade pip
	$(NG_VENV)/bin/pip install -q $$($(NG_VENV)/bin/python -c 'import sys; print("--ignore-requires-python" if sys.version_info[:3] < tuple(map(int, "$(NG_MIN_PYTHON)".split("."))) else "")') nemo-gym==$(NEMO_GYM) uv
	site=$$($(NG_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	cat $(foreach s,$(NG_SERVERS),"$$site/resources_servers/$(s)/requirements.txt") | grep -v -F '../..' \
		| $(NG_VENV)/bin/pip install -q -r /dev/stdin
	rm -f $(NG_VENV)/.installed-* $(NG_VENV)/.servers-built-*
	touch $@

# Start the servers once: where NeMo Gym builds one venv per server (from the package registry),
# that happens here, so the demo and the tests start fast; elsewhere it checks the shared venv.
$(NG_VENV)/.servers-built-$(NEMO_GYM): $(VENV)/.installed $(NG_VENV)/.installed-$(NEMO_GYM)
	$(VENV)/bin/python -m gymverl.nemo_gym --warmup $(NG_SERVERS)
	touch $@

setup: $(VENV)/.installed $(NG_VENV)/.installed-$(NEMO_GYM) $(NG_VENV)/.servers-built-$(NEMO_GYM)

demo: setup
	$(VENV)/bin/gymverl demo

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# The smaller set against the older release (its own venv; the default venv is not touched).
test-nemo-gym-0.4:
	$(MAKE) test NEMO_GYM=0.4.0 NG_VENV=$(NG04_VENV) GYMVERL_NEMO_GYM_ENV=$(abspath $(NG04_VENV)) \
		PYTEST_ARGS="$(NG04_PYTEST_ARGS)"

clean-env:
	rm -rf $(VENV) .nemo-gym-venv $(NG04_VENV)
