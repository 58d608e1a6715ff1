# statecast: two commands on a fresh Debian / Ubuntu / Raspberry Pi OS machine.
#   make demo   train -> export -> edge daemon on the Seattle hourly temperatures
#   make test   the whole suite (creates .venv, installs mosquitto when root and missing)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: all setup broker test lint demo bench soak clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# mosquitto is started by the test fixtures and the demo on a free loopback port.
broker:
	@if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 \
		&& command -v mosquitto_passwd >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			mosquitto mosquitto-clients openssl >/dev/null; \
		systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	else \
		echo "mosquitto is missing: run 'sudo apt-get install mosquitto mosquitto-clients'" >&2; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) broker lint
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest

demo: $(STAMP) broker
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 $(PY) examples/demo.py

# bench/ needs the bench extra (LiteRT, py-spy, statsforecast); results go to bench/results/*.json
bench: $(STAMP) broker
	$(PY) -m pip install --quiet -e '.[bench]'
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 $(PY) bench/bench_step.py
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 $(PY) bench/bench_processor.py
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 $(PY) bench/bench_daemon.py
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 $(PY) bench/bench_daemon.py --scoring-cost 5 --streams 1000
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 $(PY) bench/bench_intervals.py
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 $(PY) bench/bench_train_speed.py
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 $(PY) bench/bench_train.py

# 1,000,000 observations across 1,000 churning streams (about 4 minutes on 2 cores); not in `make test`.
soak: $(STAMP) broker
	$(PY) bench/soak.py --out soak.json

clean:
	rm -rf $(VENV) runs demo-out .pytest_cache .mypy_cache .ruff_cache
