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
DEMO_WAIT ?= 20
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

# The gateway as storescu's arguments: called AE title, host, port (from the settings, as the stack uses them).
DICOM_PEER = $$($(BIN)/python -c "from cxr_triage.settings import load_settings as l; s = l(); \
  print('-aec', s.dicom_ae_title, '127.0.0.1', s.dicom_port)")

# The public sample set when present, else synthetic images (made by demo-data).
DEMO_IMAGES := $(if $(wildcard $(DATA)/images),$(DATA)/images,$(CXR_HOME)/sample)

demo: setup $(if $(wildcard $(DATA)/images),,demo-data)
	$(BIN)/cxr-triage up --detach --observability
	$(BIN)/cxr-triage model init
	$(if $(wildcard $(DATA)/labels.csv),$(BIN)/cxr-triage train --data $(DATA) --if-no-champion --promote \
	  --recipe $(DEMO_RECIPE))
	$(BIN)/cxr-triage produce --json $(DEMO_IMAGES) \
	  || echo "some files were rejected (reasons above); the rest were published"
	$(BIN)/python -m producers.sample_dicom $(DEMO_IMAGES) $(CXR_HOME)/demo-dicom --studies 3
	@echo "sending 3 DICOM studies (PA + lateral, one association each) to the gateway with dcmtk's storescu"
	@for study in $(CXR_HOME)/demo-dicom/first/*/; do storescu +sd +r $(DICOM_PEER) "$$study" || exit 1; done
	@echo "waiting $(DEMO_WAIT) s for the worker to score the studies..."; sleep $(DEMO_WAIT)
	@echo "sending each DICOM study's late repeat PA: it joins its study on the worklist (no second entry)"
	@for study in $(CXR_HOME)/demo-dicom/late/*/; do storescu +sd +r $(DICOM_PEER) "$$study" || exit 1; done
	@sleep 5
	@token=$$($(BIN)/cxr-triage users add demo --role radiologist --json 2>/dev/null \
	    || $(BIN)/cxr-triage users add demo --role radiologist --rotate --json); \
	  token=$$(echo "$$token" | $(BIN)/python -c "import json,sys; print(json.load(sys.stdin)['token'])"); \
	  CXR_API_TOKEN=$$token $(BIN)/cxr-triage worklist --limit 10; \
	  echo "sign in at the web page with the demo radiologist's token: $$token"
	@$(BIN)/python -c "from cxr_triage.settings import load_settings as l; s = l(); \
	  print(f'worklist page: {s.api_url}/ (API docs: /docs; stop with: make down)')"

# Synthetic radiographs for machines without the public sample set.
demo-data: $(STAMP)
	$(BIN)/python -m producers.sample_images $(CXR_HOME)/sample

# Inference benchmark: raw ONNX Runtime, Triton gRPC, full pipeline, FP32 vs INT8 (docs/bench/).
bench: setup
	$(BIN)/cxr-triage bench all
	$(BIN)/cxr-triage bench api
