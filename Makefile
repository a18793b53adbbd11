# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Both create the virtual environment on first use (torch first, from its CPU file, then the project).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo demo-offline test test-fast lint format bench schema ui-screenshot clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A plain `torch` requirement would pull a multi-GB CUDA build; this pin takes the CPU file
	# where pip finds one (the project's machines: pip's find-links). Elsewhere set
	# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (README).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/soundtrack build manifests/demo.yaml

# The same pipeline on a tiny random-weight model (noise, not music): no download needed. Noise
# has no tempo, so the tempo gate only warns here (with a real model it rejects a missed bpm).
demo-offline: setup
	$(BIN)/soundtrack models make-tiny .work/tiny-musicgen
	$(BIN)/soundtrack build manifests/demo.yaml --model .work/tiny-musicgen --out .work/demo-assets \
		--gate tempo=warn

# pytest exits 5 when it collected nothing: a run that tests nothing must not pass. Two
# workers, one test file each at a time (module fixtures such as a deployed Prefect project
# stay in one process): most end-to-end tests wait on servers and subprocesses, so two run in
# about the time of one on two cores.
test: setup
	@$(PY) -m pytest -n 2 --dist loadfile; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The inner loop: everything but the end-to-end tests that start servers (Prefect, S3).
test-fast: setup
	@$(PY) -m pytest -m "not slow"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(PY) bench/generate.py --family musicgen
	$(PY) bench/generate.py --family ace-step
	$(PY) bench/linear.py
	$(PY) bench/postprocess.py
	$(PY) bench/long_master.py
	$(PY) bench/rebuild.py
	$(PY) bench/plan_s3.py
	$(PY) bench/yaml_limits.py

schema: setup
	$(BIN)/soundtrack schema -o manifests/soundtrack.schema.json
	$(BIN)/soundtrack schema --sidecar -o docs/sidecar.schema.json

# The demo build (tiny model) in the Prefect UI, and a review build's input form, captured by
# headless Chromium into docs/img/. Needs the system's chromium (Debian: apt-get install
# chromium); installs nothing itself.
ui-screenshot: setup
	$(PY) scripts/ui_screenshot.py docs/img/ui-flow-run.png docs/img/ui-review-form.png

clean:
	rm -rf .work .pytest_cache .mypy_cache .ruff_cache
