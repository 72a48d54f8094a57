# avatar-operator: the commands the README gives. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` also builds the images and runs them on a real node where that can
# run (root and the node's Debian packages: hack/real-node-available.sh); REAL_NODE=0 skips it.
REAL_NODE ?= auto

.PHONY: help venv binaries stack-up stack-up-real-node test-real-node stack-down stack-status crd chart-lint images unit integration reliability bench test typecheck demo viewer clean

help:
	@echo "make venv          virtualenv in .venv with the project and its test tools"
	@echo "make binaries      find or build kube-apiserver, etcd, kwok, livekit-server, helm, kubeconform"
	@echo "make kstatus-check build .stack/bin/kstatus-check (kstatus and Argo CD's Lua on objects: README)"
	@echo "make stack-up      start the local stack (writes .stack/kubeconfig and .stack/env)"
	@echo "make stack-down    stop it; no process is left"
	@echo "make images        build the operator and runner images with podman/buildah (no Docker engine)"
	@echo "make stack-up-real-node  the stack plus a real node (kubelet + containerd); off by default"
	@echo "make test-real-node      images + stack with the real node + tests/node + stack-down"
	@echo "make crd           regenerate crds/ from the models"
	@echo "make test          venv + stack-up + unit, integration and e2e tests + stack-down"
	@echo "make bench         control-plane and runner benchmarks; writes bench/results/latest.json"
	@echo "make reliability   faults, restarts, bad input, secret scans; writes bench/results/reliability.json"
	@echo "make typecheck     mypy --strict"
	@echo "make demo          stack-up + operator + demo session and agent; saves demo-output/, prints the viewer's URL"
	@echo "make viewer        bundle the page of \`avatar-operator view\` (npm ci + esbuild, from viewer/web)"

# The page of `avatar-operator view`: livekit-client pinned by viewer/web's
# package-lock.json, bundled by esbuild into the package's static/ (git-ignored).
VIEWER_WEB := viewer/web
VIEWER_BUNDLE := operator/avatar_operator/viewer/static/viewer.js

$(VIEWER_BUNDLE): $(VIEWER_WEB)/package.json $(VIEWER_WEB)/package-lock.json $(VIEWER_WEB)/src/viewer.js
	cd $(VIEWER_WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

viewer: $(VIEWER_BUNDLE)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

binaries:
	bash hack/build-binaries.sh .stack/bin

# kstatus (Flux, Helm's watcher) and the chart's Argo CD health.lua in gopher-lua,
# as one small Go program (hack/kstatus; cached). tests/integration/test_kstatus.py builds it too.
.PHONY: kstatus-check
kstatus-check:
	bash hack/kstatus/build.sh .stack/bin

stack-up:
	$(PYTHON) hack/stack.py up

stack-down:
	$(PYTHON) hack/stack.py down

stack-status:
	$(PYTHON) hack/stack.py status

crd: $(STAMP)
	$(PY) -m avatar_operator.api.crd --write
	bash hack/sync-chart-crds.sh

chart-lint: binaries
	.stack/bin/helm lint --strict charts/avatar-operator

# Both Dockerfile targets with podman or buildah (no Docker engine needed), as
# localhost/avatar-operator:dev and localhost/avatar-operator-runner:dev; saved to
# .stack/images and loaded into the real node's containerd when it runs.
images:
	bash hack/build-images.sh

# The stack with a real node beside the kwok nodes (kubelet, containerd, runc,
# a CNI bridge; off by default; README "A real node"). `make stack-down` stops it too.
stack-up-real-node:
	AVATAR_REAL_NODE=1 $(PYTHON) hack/stack.py up --real-node

# The real-node tests: images, the stack with its real node, tests/node, stack-down.
test-real-node: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory images || status=$$?; \
	if [ $$status -eq 0 ]; then $(MAKE) --no-print-directory stack-up-real-node || status=$$?; fi; \
	if [ $$status -eq 0 ]; then \
	  AVATAR_REQUIRE_REAL_NODE=1 $(PY) -m pytest tests/node -q -p no:cacheprovider $(PYTEST_ARGS) || status=$$?; \
	fi; \
	if [ "$${KEEP_STACK:-0}" != 1 ]; then $(MAKE) --no-print-directory stack-down; fi; \
	exit $$status

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: $(STAMP) viewer
	AVATAR_REQUIRE_STACK=1 $(PY) -m pytest tests/integration tests/e2e -q $(PYTEST_ARGS)

# Control-plane and runner benchmarks (~15 min): bench/results/latest.json and .png.
bench: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory stack-up || status=$$?; \
	if [ $$status -eq 0 ]; then $(PY) -m bench $(BENCH_ARGS) || status=$$?; fi; \
	if [ "$${KEEP_STACK:-0}" != 1 ]; then $(MAKE) --no-print-directory stack-down; fi; \
	exit $$status

# Faults, restarts, bad input and secret hygiene (~7 min): stops and starts the
# stack's own kube-apiserver and livekit-server, so it runs on a stack of its
# own. Writes bench/results/reliability.json.
reliability: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory stack-up || status=$$?; \
	if [ $$status -eq 0 ]; then \
	  AVATAR_REQUIRE_STACK=1 $(PY) -m pytest tests/reliability -q -p no:cacheprovider $(PYTEST_ARGS) || status=$$?; \
	fi; \
	if [ "$${KEEP_STACK:-0}" != 1 ]; then $(MAKE) --no-print-directory stack-down; fi; \
	exit $$status

typecheck: $(STAMP)
	$(PY) -m mypy operator/avatar_operator runner/avatar_runner

# The whole suite on the real stack. The stack is torn down afterwards even
# when a test fails (KEEP_STACK=1 keeps it for debugging).
test: $(STAMP) viewer
	@status=0; \
	$(MAKE) --no-print-directory stack-up || status=$$?; \
	if [ $$status -eq 0 ]; then \
	  AVATAR_REQUIRE_STACK=1 $(PY) -m pytest tests -q -p no:cacheprovider --ignore=tests/reliability --ignore=tests/node $(PYTEST_ARGS) || status=$$?; \
	fi; \
	if [ "$${KEEP_STACK:-0}" != 1 ]; then $(MAKE) --no-print-directory stack-down; fi; \
	if [ $$status -eq 0 ] && [ "$(REAL_NODE)" != 0 ] && bash hack/real-node-available.sh; then \
	  $(MAKE) --no-print-directory test-real-node || status=$$?; \
	fi; \
	exit $$status

# Pending -> Ready on the local stack, recorded to demo-output/. Leaves the
# stack, operator, runner and agent running; `make stack-down` stops them.
demo: $(STAMP) viewer
	$(MAKE) --no-print-directory stack-up
	$(PY) hack/demo.py

clean: stack-down
	rm -rf .stack
