# The two commands: `make demo` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The Lambda functions' dependencies, pinned with hashes (`make lock` writes it).
LOCK   := functions/requirements.lock
# The Lambda runtime's Python version and architecture, from template.yaml's Globals.
LAMBDA_PYTHON_VERSION := $(shell sed -n 's/^ *Runtime: *python\([0-9.]*\) *$$/\1/p' template.yaml 2>/dev/null | head -n 1)
LAMBDA_ARCH := $(shell sed -n 's/^ *Architectures: *\[ *\([a-z0-9_]*\) *\].*/\1/p' template.yaml 2>/dev/null | head -n 1)
LAMBDA_PLATFORM := $(if $(filter arm64,$(LAMBDA_ARCH)),aarch64,x86_64)-manylinux_2_28
# uv resolves for the Lambda platform and Python, whatever runs it; an existing lock's
# pins are kept unless UPGRADE=1 (then every pin moves to the newest allowed).
UV_COMPILE = $(BIN)/uv pip compile functions/requirements.txt --quiet --no-progress \
	--generate-hashes --python-version $(LAMBDA_PYTHON_VERSION) \
	--python-platform $(LAMBDA_PLATFORM) --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)
export SAM_CLI_TELEMETRY := 0
export PYTHONDONTWRITEBYTECODE := 1
# The Lambda code lives in functions/ (its own package root, as in the SAM build).
export PYTHONPATH := $(CURDIR)/functions:$(CURDIR)

.PHONY: help checkov venv lint fmt typecheck validate test unit integration e2e dev demo openapi clean lock lock-check build build-smoke sizes

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The Lambda functions' pins (with hashes) go in first, checked; the dev tools then
# install around them, constrained to the same versions (pip refuses hashes in a
# constraints file, hence the hash-free copy): the tests run what `make build` packages.
$(STAMP): requirements-dev.txt functions/requirements.txt $(LOCK) cli/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CLI's distribution was called `qgjob` before it became `qgjob-cli` (that name
	@# on PyPI is another project's): a venv made then drops the old one first.
	$(BIN)/python -m pip uninstall -q -y qgjob 2>/dev/null || true
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*==[^ ]*\).*/\1/p' $(LOCK) > $(VENV)/lock-pins.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c $(VENV)/lock-pins.txt -e ./cli
	touch $@

venv: $(STAMP) ## Create the virtualenv with every dependency

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP) ## mypy on functions/ and cli/
	$(BIN)/mypy functions/qgjob_backend cli/qgjob

validate: $(STAMP) ## cfn-lint and sam validate --lint on template.yaml; action.yml's schema
	$(BIN)/check-jsonschema --builtin-schema vendor.github-actions action.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	@# GitHub Actions security audit (offline): the build/deploy workflows with no finding;
	@# every workflow with none of medium severity or worse.
	$(BIN)/zizmor --offline --quiet .github/workflows/ci.yml .github/workflows/deploy.yml
	$(BIN)/zizmor --offline --quiet --min-severity medium .github/workflows
	$(BIN)/cfn-lint template.yaml
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
		$(BIN)/sam validate --lint --template template.yaml

lock: $(BIN)/uv ## Re-pin functions/requirements.lock from functions/requirements.txt (UPGRADE=1: newest)
	$(UV_COMPILE) --output-file $(LOCK)

lock-check: $(BIN)/uv ## Fail if functions/requirements.lock is stale (needs PyPI)
	@tmp=$$(mktemp) && cp $(LOCK) $$tmp && $(UV_COMPILE) --output-file $$tmp \
		&& if diff -u $(LOCK) $$tmp; then rm -f $$tmp; echo "$(LOCK) is up to date"; \
		else rm -f $$tmp; echo "error: $(LOCK) is stale: run \`make lock\` and commit it" >&2; exit 1; fi

# Only uv: the lock targets must run even when a requirements change has not been
# locked yet (the venv would not install then).
$(BIN)/uv:
	$(MAKE) venv

build: $(STAMP) ## sam build: one package per function, with a Python of the template's Runtime
	@py=$$($(BIN)/python infra/lambda_build.py find-python) || exit 2; \
	echo "sam build with $$py ($$($$py --version))"; \
	QGJOB_LAMBDA_PYTHON=$$py $(BIN)/sam build
	$(BIN)/python infra/lambda_build.py sizes

build-smoke: ## Import each built handler with only its package and the runtime's SDK
	$(BIN)/python infra/lambda_build.py smoke

sizes: ## Size of each function's package in .aws-sam/build (after make build)
	$(BIN)/python infra/lambda_build.py sizes

openapi: $(STAMP) ## Regenerate functions/qgjob_backend/openapi.json from the API models
	$(BIN)/python -m qgjob_backend.handlers.api --openapi > functions/qgjob_backend/openapi.json

# checkov pins its own boto3 and friends, so it lives in a venv of its own, made on demand:
# tests/unit/test_template_checkov.py runs its IAM checks on the expanded template.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

checkov: $(CHECKOV_STAMP) ## Install checkov in its own venv (make test uses it)

test: lint typecheck validate $(CHECKOV_STAMP) ## Lint, type-check, validate the template, run every test
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -q

unit: $(STAMP) ## Unit tests only (no network)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) ## Adapters and handlers against moto
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP) ## The local stack, the real CLI and real agents
	$(BIN)/pytest -q tests/e2e

dev: $(STAMP) ## Run the whole stack locally on moto (Ctrl-C stops it)
	$(BIN)/python -m infra.local_stack

demo: $(STAMP) ## Start the local stack, submit the examples, show grouping and results, stop
	$(BIN)/python -m infra.demo

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam .qgjob-local
