# The test suite in a container: `docker build -t qgjob-test . && docker run --rm qgjob-test`
# runs `make test` (ruff, mypy, cfn-lint + sam validate, every test: unit, integration on
# in-process moto, e2e on the local stack). Nothing in it reaches AWS: the local stack
# and the tests run on moto, BrowserStack is faked, and SAM telemetry is off.
#
# Pinned: an exact Python patch release on an exact Debian release (slim). Bump it with
# the Python CI uses (.github/workflows/ci.yml).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAM_CLI_TELEMETRY=0

# make runs the suite; nothing else is needed from Debian (no Node: the tests fake npx).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

# The tests start servers and subprocesses: run them as a plain user, not root.
RUN useradd --create-home --uid 10001 qgjob
WORKDIR /home/qgjob/qgjob
RUN chown 10001:10001 /home/qgjob/qgjob
USER 10001:10001

# Dependencies first, in their own layer: editing the code does not reinstall them.
# (make venv installs requirements-dev.txt and the CLI, editable, into .venv.)
COPY --chown=10001:10001 Makefile requirements-dev.txt ./
COPY --chown=10001:10001 functions/requirements.txt functions/requirements.lock functions/
COPY --chown=10001:10001 cli/ cli/
RUN make venv

COPY --chown=10001:10001 . .

CMD ["make", "test"]
