"""The EstimateStore contract, run against the in-memory fake AND DynamoDB (moto)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from qgjob_backend.adapters.dynamodb import DynamoEstimateStore
from qgjob_backend.config import Config
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.ports import EstimateConflict, EstimateStore
from qgjob_backend.schema import Target
from tests.unit.fakes import MemoryEstimateStore

T0 = 1_000.0
LOGIN = EstimateKey("acme", Target.EMULATOR, "tests/login.spec.js")


class _InterleavingClient:
    """A boto3 client whose next put_item first runs a queued action (a concurrent writer)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.before_put: list[Callable[[], None]] = []

    def put_item(self, **kwargs: Any) -> Any:
        if self.before_put:
            self.before_put.pop(0)()
        return self._inner.put_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class Harness:
    store: EstimateStore
    # A second store over the same data, for a "concurrent" writer.
    other: EstimateStore
    # Runs the action just before the store's next ``times`` conditional writes.
    interleave: Callable[[Callable[[], None], int], None]


@pytest.fixture(params=["memory", "dynamo"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        memory = MemoryEstimateStore()

        def interleave_memory(action: Callable[[], None], times: int) -> None:
            remaining = [times]

            def hook() -> None:
                action()
                remaining[0] -= 1
                if remaining[0] > 0:
                    memory.before_write = hook

            memory.before_write = hook

        yield Harness(memory, memory, interleave_memory)
        return
    config: Config = request.getfixturevalue("config")
    session: boto3.Session = request.getfixturevalue("aws_session")
    client = _InterleavingClient(session.client("dynamodb"))

    def interleave_dynamo(action: Callable[[], None], times: int) -> None:
        client.before_put.extend([action] * times)

    yield Harness(
        DynamoEstimateStore(client, config.estimates_table),
        DynamoEstimateStore(session.client("dynamodb"), config.estimates_table),
        interleave_dynamo,
    )


def test_nothing_is_known_at_first(harness: Harness) -> None:
    assert harness.store.test_estimates([LOGIN]) == {}
    assert harness.store.install_estimates(list(Target)) == {}
    assert harness.store.test_estimates([]) == {}


def test_a_recorded_duration_is_the_domain_update(harness: Harness) -> None:
    store = harness.store

    assert store.record_test_duration(LOGIN, "job-1", 30.0, T0) is True
    assert store.record_test_duration(LOGIN, "job-2", 36.0, T0 + 1) is True

    expected = DurationEstimate().updated(30.0, "job-1").updated(36.0, "job-2")
    assert store.test_estimates([LOGIN]) == {LOGIN: expected}


def test_the_same_sample_is_counted_once(harness: Harness) -> None:
    store = harness.store

    assert store.record_test_duration(LOGIN, "job-1", 30.0, T0) is True
    assert store.record_test_duration(LOGIN, "job-1", 30.0, T0 + 5) is False
    assert store.record_install_duration(Target.DEVICE, "batch-1", 80.0, T0) is True
    assert store.record_install_duration(Target.DEVICE, "batch-1", 80.0, T0) is False

    assert store.test_estimates([LOGIN])[LOGIN].samples == 1
    assert store.install_estimates([Target.DEVICE])[Target.DEVICE].samples == 1


def test_estimates_are_kept_per_org_target_and_test(harness: Harness) -> None:
    store = harness.store
    keys = [
        LOGIN,
        EstimateKey("globex", Target.EMULATOR, LOGIN.test_path),
        EstimateKey("acme", Target.DEVICE, LOGIN.test_path),
        EstimateKey("acme", Target.EMULATOR, "tests/cart.spec.js"),
    ]
    for seconds, key in enumerate(keys, start=1):
        store.record_test_duration(key, f"job-{seconds}", float(seconds), T0)
    store.record_install_duration(Target.EMULATOR, "batch-1", 50.0, T0)

    found = store.test_estimates(keys)
    assert {k: e.mean_s for k, e in found.items()} == {k: float(i) for i, k in enumerate(keys, 1)}
    installs = store.install_estimates(list(Target))
    assert {t: e.mean_s for t, e in installs.items()} == {Target.EMULATOR: 50.0}


def test_a_batch_read_returns_only_what_exists_even_for_many_keys(harness: Harness) -> None:
    store = harness.store
    keys = [EstimateKey("acme", Target.EMULATOR, f"tests/t{i}.spec.js") for i in range(150)]
    for index in (0, 99, 100, 149):
        store.record_test_duration(keys[index], f"job-{index}", 10.0 + index, T0)

    found = store.test_estimates([*keys, keys[0]])  # a duplicate key is fine

    assert set(found) == {keys[i] for i in (0, 99, 100, 149)}
    assert found[keys[149]].mean_s == 159.0


def test_a_concurrent_writer_is_not_lost(harness: Harness) -> None:
    store = harness.store
    store.record_test_duration(LOGIN, "job-1", 10.0, T0)
    harness.interleave(lambda: harness.other.record_test_duration(LOGIN, "job-2", 20.0, T0), 1)

    assert store.record_test_duration(LOGIN, "job-3", 30.0, T0) is True

    estimate = store.test_estimates([LOGIN])[LOGIN]
    assert estimate.samples == 3
    assert set(estimate.recent_ids) == {"job-1", "job-2", "job-3"}
    assert estimate.mean_s == pytest.approx(20.0)


def test_the_first_write_races_too(harness: Harness) -> None:
    harness.interleave(
        lambda: harness.other.record_install_duration(Target.EMULATOR, "b0", 40, T0), 1
    )

    assert harness.store.record_install_duration(Target.EMULATOR, "b1", 60.0, T0) is True

    assert harness.store.install_estimates([Target.EMULATOR])[Target.EMULATOR].samples == 2


def test_a_retry_after_a_lost_response_is_not_counted_twice(harness: Harness) -> None:
    # The write landed but its caller never heard back: the other writer stands for it.
    harness.interleave(lambda: harness.other.record_test_duration(LOGIN, "job-1", 10.0, T0), 1)

    assert harness.store.record_test_duration(LOGIN, "job-1", 10.0, T0) is False

    assert harness.store.test_estimates([LOGIN])[LOGIN].samples == 1


def test_an_estimate_that_keeps_changing_gives_up(harness: Harness) -> None:
    counter = iter(range(100))
    harness.interleave(
        lambda: harness.other.record_test_duration(LOGIN, f"other-{next(counter)}", 5.0, T0), 10
    )

    with pytest.raises(EstimateConflict):
        harness.store.record_test_duration(LOGIN, "job-1", 10.0, T0)

    assert not harness.store.test_estimates([LOGIN])[LOGIN].counted("job-1")
