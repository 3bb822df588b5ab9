"""The job payload schema: the one definition shared by the API and the CLI.

This module imports nothing but pydantic and the standard library, because the
`qgjob` CLI ships it too (``cli/qgjob/schema.py`` is a link to this file).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MAX_TESTS_PER_SUITE = 1000
MIN_PRIORITY = 1
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 5
DEFAULT_TIMEOUT_S = 1800
MAX_TIMEOUT_S = 6 * 3600
DEFAULT_RETRIES = 2
MAX_RETRIES = 5


class Target(StrEnum):
    """Where a test runs. Jobs of different targets never share a batch."""

    EMULATOR = "emulator"
    DEVICE = "device"
    BROWSERSTACK = "browserstack"


class Overflow(StrEnum):
    """Another pool a run's waiting jobs may move to when it would finish them sooner."""

    BROWSERSTACK = "browserstack"
    # Never move, whatever the org's default (``infra.admin orgs set``).
    NONE = "none"

    @property
    def pool(self) -> Target | None:
        """The pool it names; None for ``none``."""
        return None if self is Overflow.NONE else Target(self.value)


# The targets whose runs may overflow (BrowserStack itself may not).
OVERFLOW_FROM = (Target.EMULATOR, Target.DEVICE)


class JobStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {JobStatus.PASSED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)


def _check_test_path(value: str) -> str:
    if value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value):
        raise ValueError("must be a relative path (no leading '/')")
    segments = re.split(r"[\\/]", value)
    if ".." in segments:
        raise ValueError("must not contain a '..' segment")
    # A runner puts the path on a command line: a segment like `--config=x` or `-c`
    # could be read as an option of the test tool on a shared device host.
    if any(segment.startswith("-") for segment in segments):
        raise ValueError("no path segment may begin with '-' (it could be read as an option)")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters")
    return value


TEST_PATH_RULES = (
    "1 to 512 characters, relative (no leading '/' or drive letter), no '..' segment, "
    "no segment beginning with '-' (segments split on '/' and '\\'), no control characters."
)

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
TestPath = Annotated[
    str, StringConstraints(min_length=1, max_length=512), AfterValidator(_check_test_path)
]
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]


class _Submission(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    org_id: Identifier = Field(description="Organisation that owns the job.")
    app_version_id: Identifier = Field(description="App build under test.")
    priority: Priority = Field(
        default=DEFAULT_PRIORITY, description="1 is the most urgent, 10 the least."
    )
    target: Target = Field(default=Target.EMULATOR, description="Device pool to run on.")
    idempotency_key: IdempotencyKey | None = Field(
        default=None,
        description="Same key and org always return the same job or run, never a second one.",
    )
    timeout_s: int = Field(
        default=DEFAULT_TIMEOUT_S,
        ge=1,
        le=MAX_TIMEOUT_S,
        strict=True,
        description="Longest a single test may run.",
    )
    retries: int = Field(
        default=DEFAULT_RETRIES,
        ge=0,
        le=MAX_RETRIES,
        strict=True,
        description="Re-runs after an infrastructure error or a lost agent.",
    )
    failure_retries: int = Field(
        default=0,
        ge=0,
        le=MAX_RETRIES,
        strict=True,
        description=(
            "Re-runs of a test that failed (the CLI's --retries). A test that fails and "
            "then passes is flaky: it passes, and the run counts it as flaky. "
            "Infrastructure errors are retried without spending these."
        ),
    )
    overflow: Overflow | None = Field(
        default=None,
        description=(
            "Lets the run's waiting jobs move to the BrowserStack pool when it would finish "
            "them sooner, counting its upload (install) time and its own queue (the CLI's "
            "--overflow). Only for emulator and device runs. 'none': they never move. "
            "Absent: the org's default (none unless an operator set one)."
        ),
    )

    @field_validator("overflow")
    @classmethod
    def _overflow_from(cls, value: Overflow | None, info: ValidationInfo) -> Overflow | None:
        target = info.data.get("target")
        # Opting out ('none') is harmless on any target; only moving needs a home pool.
        if value is not None and value.pool is not None and target not in (None, *OVERFLOW_FROM):
            raise ValueError(
                f"a {Target(target).value} run cannot overflow; only "
                + " and ".join(t.value for t in OVERFLOW_FROM)
                + " runs may"
            )
        return value


class JobPayload(_Submission):
    """One test job: the seed schema plus optional fields."""

    test_path: TestPath = Field(
        description=f"Relative path of the AppWright spec. {TEST_PATH_RULES}"
    )


class SuiteSubmission(_Submission):
    """Many tests of one app version and target, submitted as one run."""

    test_paths: list[TestPath] = Field(
        min_length=1,
        max_length=MAX_TESTS_PER_SUITE,
        description=f"Specs to run, in order. Each is a test path: {TEST_PATH_RULES}",
    )

    def jobs(self) -> list[JobPayload]:
        common = self.model_dump(exclude={"test_paths"})
        return [JobPayload(**common, test_path=path) for path in self.test_paths]


def describe_validation_error(error: object) -> str:
    """Turns a pydantic ValidationError into one line that names each bad field."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error)
    parts = []
    for item in errors():
        field = ".".join(str(p) for p in item.get("loc", ())) or "body"
        parts.append(f"{field}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)
