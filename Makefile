# cxr-triage: `make demo` and `make test` work on a fresh Debian/Ubuntu machine (setup runs first).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# State folder of the local stack (Kafka log, Redis AOF, models, logs, pids); cxr-triage reads CXR_HOME.
CXR_HOME ?= .stack
export CXR_HOME
DATA ?= ../shared/datasets/cxr-public
# The retrain worker that `up` starts trains on the public set beside the radiologists' feedback when it is here
# (only for the stack these targets start: tests set their own).
ifneq ($(wildcard $(DATA)/labels.csv),)
up demo: export CXR_RETRAIN_PUBLIC_DATA ?= $(abspath $(DATA))
endif
# The demo trains the `demo` recipe (trainer/recipes.py, chosen by the cross-validated study in
# docs/experiments.md); its input size travels in the model, so the stack needs no setting for it.
DEMO_RECIPE ?= demo
APT_PACKAGES := openjdk-17-jre-headless maven redis-server chromium dcmtk orthanc prometheus docker-compose

.PHONY: help setup system-deps kafka-jars up down status lint test demo demo-data bench

help:
	@echo "make setup   install what is missing: Java 17, Maven, redis-server, dcmtk, Orthanc, Prometheus, docker-compose (as root), .venv, Kafka jars"
	@echo "make up      start the local stack in the background, with Prometheus (cxr-triage up --detach --observability)"
	@echo "make down    stop it (data stays in $(CXR_HOME))"
	@echo "make status  state of each component"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make test    setup, lint, then every test (unit + integration against real services)"
	@echo "make bench   inference benchmark -> docs/bench/inference.{json,md} (~5 min)"
	@echo "make demo    setup, start the stack, score sample radiographs, print the worklist"

setup: system-deps $(STAMP) kafka-jars

# Only what is missing, and only as root; Java must be 17 or newer (Kafka 4 needs it).
system-deps:
	@missing=""; \
	if ! command -v java >/dev/null || ! java -version 2>&1 \
	    | awk -F'"' '/version/ { split($$2, v, "."); exit !(v[1] >= 17) }'; then \
	  missing="$$missing openjdk-17-jre-headless"; fi; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing system packages:$$missing; run 'sudo apt-get install -y$$missing' or 'make setup' as root" >&2; \
	  exit 1; fi; \
	echo "installing$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changed since the last install, so a second `make setup` is fast.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

kafka-jars: $(STAMP)
	@$(BIN)/python -m deploy.kafka_jars

up: setup
	$(BIN)/cxr-triage up --detach --observability

down:
	$(BIN)/cxr-triage down

status:
	$(BIN)/cxr-triage status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25 tests

# The public sample set when present, else synthetic images (made by demo-data).
DEMO_DATA := $(if $(wildcard $(DATA)/images),$(DATA),$(CXR_HOME)/sample)

# One line or progress bar per stage (`cxr-triage demo`); every command's log goes under $(CXR_HOME)/logs.
demo:
	@mkdir -p $(CXR_HOME)/logs
	@echo "[set-up] system packages, .venv and Kafka jars (log: $(CXR_HOME)/logs/setup.log)"
	@$(MAKE) --no-print-directory setup $(if $(wildcard $(DATA)/images),,demo-data) \
	  > $(CXR_HOME)/logs/setup.log 2>&1 || { tail -n 15 $(CXR_HOME)/logs/setup.log; \
	  echo "set-up failed: the whole log is $(CXR_HOME)/logs/setup.log"; exit 1; }
	@$(BIN)/cxr-triage demo --data $(DEMO_DATA) --recipe $(DEMO_RECIPE)

# Synthetic radiographs for machines without the public sample set (no labels: the demo trains nothing).
demo-data: $(STAMP)
	$(BIN)/python -m producers.sample_images $(CXR_HOME)/sample/images

# Inference benchmark: raw ONNX Runtime, Triton gRPC, full pipeline, FP32 vs INT8 (docs/bench/).
bench: setup
	$(BIN)/cxr-triage bench all
	$(BIN)/cxr-triage bench api
