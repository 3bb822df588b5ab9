"""The shared job payload schema: every field's limits and the one-line error messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qgjob_backend.schema import (
    DEFAULT_PRIORITY,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    FINAL_STATUSES,
    MAX_TESTS_PER_SUITE,
    JobPayload,
    JobStatus,
    SuiteSubmission,
    Target,
    describe_validation_error,
)

BASE: dict[str, Any] = {"org_id": "acme", "app_version_id": "v1.2.3", "test_path": "tests/a.js"}


def payload(**overrides: Any) -> dict[str, Any]:
    data = dict(BASE)
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not ...}


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        JobPayload.model_validate(payload(**overrides))
    return describe_validation_error(raised.value)


# ------------------------------------------------------------------ defaults
def test_the_seed_schema_with_defaults() -> None:
    job = JobPayload.model_validate(BASE)

    assert job.org_id == "acme"
    assert job.app_version_id == "v1.2.3"
    assert job.test_path == "tests/a.js"
    assert job.priority == DEFAULT_PRIORITY == 5
    assert job.target is Target.EMULATOR
    assert job.idempotency_key is None
    assert job.timeout_s == DEFAULT_TIMEOUT_S
    assert job.retries == DEFAULT_RETRIES


def test_json_round_trip() -> None:
    job = JobPayload.model_validate(payload(target="device", priority=1, idempotency_key="k:1"))

    assert JobPayload.model_validate_json(job.model_dump_json()) == job
    assert job.model_dump(mode="json")["target"] == "device"


# ------------------------------------------------------------------ ids
@pytest.mark.parametrize("value", ["a", "A-z_0.9", "x" * 64, "v1.2.3-rc.1"])
@pytest.mark.parametrize("field", ["org_id", "app_version_id"])
def test_valid_ids(field: str, value: str) -> None:
    assert getattr(JobPayload.model_validate(payload(**{field: value})), field) == value


@pytest.mark.parametrize(
    "value", ["", "x" * 65, "has space", "a/b", "a:b", "émoji", "tab\t", "new\nline", 12]
)
@pytest.mark.parametrize("field", ["org_id", "app_version_id"])
def test_invalid_ids_name_the_field(field: str, value: Any) -> None:
    assert error_of(**{field: value}).startswith(f"{field}: ")


@pytest.mark.parametrize("field", ["org_id", "app_version_id", "test_path"])
def test_required_fields(field: str) -> None:
    assert error_of(**{field: ...}) == f"{field}: Field required"


# ------------------------------------------------------------------ test_path
@pytest.mark.parametrize(
    "value",
    [
        "a",
        "tests/login.spec.js",
        "./tests/a.js",
        "a..b/c..js",
        "x" * 512,
        "dir/.hidden",
        "tests/log-in.spec.js",
        "tests/a-/b--c.js",
    ],
)
def test_valid_test_paths(value: str) -> None:
    assert JobPayload.model_validate(payload(test_path=value)).test_path == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/etc/passwd", "relative"),
        ("C:\\specs\\a.js", "relative"),
        ("c:/specs/a.js", "relative"),
        ("..", "'..'"),
        ("../secrets.js", "'..'"),
        ("tests/../../x.js", "'..'"),
        ("tests\\..\\x.js", "'..'"),
        ("tests/a.js/..", "'..'"),
        ("--config=/tmp/evil.config.ts", "begin with '-'"),
        ("--output=/home", "begin with '-'"),
        ("-c", "begin with '-'"),
        ("-", "begin with '-'"),
        ("tests/--reporter=line", "begin with '-'"),
        ("tests\\-x.spec.js", "begin with '-'"),
        ("tests/\x00a.js", "control"),
        ("tests/a\n.js", "control"),
        ("", "at least 1"),
        ("x" * 513, "at most 512"),
    ],
)
def test_invalid_test_paths(value: str, reason: str) -> None:
    message = error_of(test_path=value)

    assert message.startswith("test_path: ")
    assert reason in message


# ------------------------------------------------------------------ priority
@pytest.mark.parametrize("value", [1, 5, 10])
def test_priority_bounds_accepted(value: int) -> None:
    assert JobPayload.model_validate(payload(priority=value)).priority == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "priority: Input should be greater than or equal to 1"),
        (11, "priority: Input should be less than or equal to 10"),
        (-3, "priority: Input should be greater than or equal to 1"),
    ],
)
def test_priority_out_of_range(value: int, expected: str) -> None:
    assert error_of(priority=value) == expected


@pytest.mark.parametrize("value", ["3", 3.0, 2.5, True, None])
def test_priority_must_be_a_real_integer(value: Any) -> None:
    assert error_of(priority=value).startswith("priority: ")


# ------------------------------------------------------------------ target
@pytest.mark.parametrize("value", ["emulator", "device", "browserstack"])
def test_targets(value: str) -> None:
    assert JobPayload.model_validate(payload(target=value)).target is Target(value)


@pytest.mark.parametrize("value", ["Emulator", "ios", "", 1])
def test_unknown_target_lists_the_choices(value: Any) -> None:
    message = error_of(target=value)

    assert message.startswith("target: ")
    assert "'emulator', 'device' or 'browserstack'" in message


# ------------------------------------------------------------------ optional fields
@pytest.mark.parametrize("value", ["k", "ci:build-42.1_x", "x" * 128])
def test_idempotency_keys(value: str) -> None:
    assert JobPayload.model_validate(payload(idempotency_key=value)).idempotency_key == value


@pytest.mark.parametrize("value", ["", "x" * 129, "has space", "a/b"])
def test_invalid_idempotency_keys(value: str) -> None:
    assert error_of(idempotency_key=value).startswith("idempotency_key: ")


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("timeout_s", [1, 21600], [0, 21601, "60", 1.5]),
        ("retries", [0, 5], [-1, 6, "1"]),
    ],
)
def test_timeout_and_retries_limits(field: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert getattr(JobPayload.model_validate(payload(**{field: value})), field) == value
    for value in bad:
        assert error_of(**{field: value}).startswith(f"{field}: ")


def test_unknown_fields_are_rejected() -> None:
    assert error_of(tset_path="typo.js") == "tset_path: Extra inputs are not permitted"


# ------------------------------------------------------------------ suites
def suite(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "org_id": "acme",
        "app_version_id": "v1",
        "test_paths": ["a.js", "b.js"],
    }
    data.update(overrides)
    return data


def test_a_suite_expands_to_jobs_in_order_sharing_its_settings() -> None:
    submission = SuiteSubmission.model_validate(
        suite(
            test_paths=["z.js", "a.js", "m.js"],
            priority=2,
            target="browserstack",
            idempotency_key="k",
            timeout_s=30,
            retries=0,
        )
    )

    jobs = submission.jobs()

    assert [j.test_path for j in jobs] == ["z.js", "a.js", "m.js"]
    for job in jobs:
        assert (job.org_id, job.app_version_id, job.priority, job.target) == (
            "acme",
            "v1",
            2,
            Target.BROWSERSTACK,
        )
        assert (job.idempotency_key, job.timeout_s, job.retries) == ("k", 30, 0)


def test_a_suite_needs_between_one_and_the_maximum_tests() -> None:
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission.model_validate(suite(test_paths=[]))
    assert describe_validation_error(raised.value).startswith("test_paths: ")

    many = [f"t{i}.js" for i in range(MAX_TESTS_PER_SUITE + 1)]
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission.model_validate(suite(test_paths=many))
    assert describe_validation_error(raised.value).startswith("test_paths: ")

    assert len(SuiteSubmission.model_validate(suite(test_paths=many[:-1])).test_paths) == (
        MAX_TESTS_PER_SUITE
    )


def test_a_bad_path_in_a_suite_is_named_by_its_index() -> None:
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission.model_validate(suite(test_paths=["ok.js", "../escape.js"]))

    assert describe_validation_error(raised.value).startswith("test_paths.1: ")


def test_a_suite_rejects_an_option_like_path_naming_its_index() -> None:
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission.model_validate(suite(test_paths=["ok.js", "-c"]))
    message = describe_validation_error(raised.value)
    assert message.startswith("test_paths.1: ")
    assert "begin with '-'" in message


def test_the_test_path_rules_are_in_the_json_schema() -> None:
    job = JobPayload.model_json_schema()["properties"]["test_path"]["description"]
    runs = SuiteSubmission.model_json_schema()["properties"]["test_paths"]["description"]
    for description in (job, runs):
        assert "no segment beginning with '-'" in description
        assert "no '..' segment" in description


def test_a_suite_does_not_take_a_single_test_path() -> None:
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission.model_validate(suite(test_path="a.js"))

    assert "test_path: Extra inputs are not permitted" in describe_validation_error(raised.value)


# ------------------------------------------------------------------ errors and statuses
def test_every_bad_field_is_named_in_one_line() -> None:
    message = error_of(org_id="", priority=42, target="moon")

    assert "\n" not in message
    parts = message.split("; ")
    assert [p.split(":")[0] for p in parts] == ["org_id", "priority", "target"]


def test_describe_validation_error_of_a_plain_error() -> None:
    assert describe_validation_error(ValueError("boom")) == "boom"


def test_a_non_object_body_is_described_as_the_body() -> None:
    with pytest.raises(ValidationError) as raised:
        JobPayload.model_validate(["not", "an", "object"])

    assert describe_validation_error(raised.value).startswith("body: ")


def test_final_statuses() -> None:
    assert {s for s in JobStatus if s.is_final} == set(FINAL_STATUSES)
    assert set(FINAL_STATUSES) == {"passed", "failed", "error", "cancelled", "timed_out"}
    assert not JobStatus.QUEUED.is_final
    assert not JobStatus.RUNNING.is_final
