"""A run poll is constant work: GET /runs/{id} makes the same store calls whatever the
size of the run and of the backlog (issue 9: per-state counters on the run item), and so
does GET /metrics whatever the org's history (counters, no scan)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from qgjob_backend.schema import SuiteSubmission
from qgjob_backend.services.auth import TokenKind
from qgjob_backend.wiring import Services, assemble_services
from tests.unit.api_calls import api_get
from tests.unit.fakes import (
    CountingStore,
    FakeClock,
    MemoryArtifactStore,
    MemoryEstimateStore,
    MemoryJobQueue,
    MemoryTokenStore,
    SequentialIds,
    fake_config,
)

SUITE_LIMIT = 1000  # MAX_TESTS_PER_SUITE


class World:
    """The real services over counting fakes, with ``queued`` jobs waiting in runs of at
    most 1,000; ``probe`` is the largest run."""

    def __init__(self, queued: int) -> None:
        self.store = CountingStore()
        self.tokens = MemoryTokenStore()
        self.services: Services = assemble_services(
            fake_config(),
            store=self.store,
            queue=MemoryJobQueue(),
            artifacts=MemoryArtifactStore(),
            token_store=self.tokens,
            estimate_store=MemoryEstimateStore(),
            clock=FakeClock(),
            new_id=SequentialIds(),
        )
        self.token = self.services.tokens.create(TokenKind.ORG, "acme")
        runs = []
        for start in range(0, queued, SUITE_LIMIT):
            paths = [f"tests/t{i}.spec.js" for i in range(start, min(queued, start + SUITE_LIMIT))]
            suite = SuiteSubmission(
                org_id="acme", app_version_id=f"v{start}", target="emulator", test_paths=paths
            )
            runs.append(self.services.submissions.submit("acme", suite).run)
        self.probe = max(runs, key=lambda r: len(r.job_ids))

    def get(self, path: str) -> tuple[int, dict[str, Any], Counter[str]]:
        """One request through the API handler: its status, body and state store calls (the
        token lookup, the same for every route, is the token store's)."""
        self.store.calls.clear()
        self.store.counting = True
        try:
            status, body = api_get(self.services, self.token, path)
        finally:
            self.store.counting = False
        return status, body, Counter(self.store.calls)


@pytest.fixture(scope="module")
def small() -> World:
    return World(10)


@pytest.fixture(scope="module")
def large() -> World:
    return World(10_000)


def test_a_run_poll_makes_the_same_store_calls_with_10_and_10000_queued_jobs(
    small: World, large: World
) -> None:
    polls = {}
    for name, world in (("small", small), ("large", large)):
        status, body, calls = world.get(f"/runs/{world.probe.run_id}")
        assert status == 200, body
        assert (body["total"], body["counts"]) == (
            len(world.probe.job_ids),
            {"queued": len(world.probe.job_ids)},
        )
        assert "jobs" not in body
        polls[name] = calls

    assert len(small.store.jobs) == 10
    assert len(large.store.jobs) == 10_000
    assert len(large.probe.job_ids) == SUITE_LIMIT  # the largest run there can be
    assert polls["small"] == polls["large"] == {"get_run": 1}


def test_metrics_make_the_same_store_calls_whatever_the_orgs_history(
    small: World, large: World
) -> None:
    answers = [world.get("/metrics") for world in (small, large)]

    assert [status for status, _, _ in answers] == [200, 200]
    assert [body["jobs_by_status"] for _, body, _ in answers] == [
        {"queued": 10},
        {"queued": 10_000},
    ]
    assert answers[0][2] == answers[1][2] == {"org_metrics": 1}


def test_a_page_of_jobs_is_bounded_however_large_the_run(large: World) -> None:
    status, body, calls = large.get(f"/runs/{large.probe.run_id}/jobs?limit=100")

    assert status == 200, body
    assert len(body["jobs"]) == 100
    assert body["next_cursor"]
    assert calls == {"get_run": 1, "run_jobs": 1}
