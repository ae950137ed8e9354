# `make run` starts the app, `make test` runs every test; both create .venv and install what is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-all bench demo chromium clean

run: $(VENV)/.requirements
	$(BIN)/streamlit run streamlit_app.py --server.port $(PORT)

test: $(VENV)/.requirements-dev chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(VENV)/.requirements-dev chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --runslow $(PYTEST_ARGS)

bench: $(VENV)/.requirements
	$(BIN)/python -m bench.caption_throughput
	$(BIN)/python -m bench.caption_latency
	$(BIN)/python -m bench.chat_latency
	$(BIN)/python -m bench.index_throughput
	$(BIN)/python -m bench.search_latency
	$(BIN)/python -m bench.finetune_speed
	$(BIN)/python -m bench.learning_loop
	$(BIN)/python -m bench.decoder_speed
	$(BIN)/python -m bench.pixel_throughput
	$(BIN)/python -m bench.feedback_log

demo: $(VENV)/.requirements
	$(BIN)/python -m captioner demo build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The project itself is installed editable (no deps: requirements.txt has them) for the `captioner` and
# `captioner-finetune` commands; the app, tests and `python -m bench.<name>` also run straight from the checkout.
$(VENV)/.requirements: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

$(VENV)/.requirements-dev: requirements-dev.txt $(VENV)/.requirements
	$(BIN)/python -m pip install -r requirements-dev.txt
	touch $@

# The browser tests drive Debian's chromium; elsewhere they are skipped with a message.
chromium:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium is not installed and apt-get is not available: browser tests will be skipped"; fi

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts build *.egg-info
