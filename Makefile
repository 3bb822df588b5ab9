# The two commands: `make demo` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export PYTHONDONTWRITEBYTECODE := 1
# The Lambda code lives in functions/ (its own package root, as in the SAM build).
export PYTHONPATH := $(CURDIR)/functions:$(CURDIR)

.PHONY: help venv lint fmt typecheck validate test unit integration e2e dev demo openapi clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt functions/requirements.txt cli/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CLI's distribution was called `qgjob` before it became `qgjob-cli` (that name
	@# on PyPI is another project's): a venv made then drops the old one first.
	$(BIN)/python -m pip uninstall -q -y qgjob 2>/dev/null || true
	$(BIN)/python -m pip install -q -r requirements-dev.txt -e ./cli
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
	$(BIN)/cfn-lint template.yaml
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
		$(BIN)/sam validate --lint --template template.yaml

openapi: $(STAMP) ## Regenerate functions/qgjob_backend/openapi.json from the API models
	$(BIN)/python -m qgjob_backend.handlers.api --openapi > functions/qgjob_backend/openapi.json

test: lint typecheck validate ## Lint, type-check, validate the template, run every test
	$(BIN)/pytest -q

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam .qgjob-local
