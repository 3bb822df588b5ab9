"""The pure overflow core: which waiting jobs move to the BrowserStack pool."""

from __future__ import annotations

import functools
import math
import random

import pytest

from qgjob_backend.domain.models import AppRef
from qgjob_backend.domain.overflow import (
    OverflowPolicy,
    apply_moves,
    finish_level,
    plan_overflow,
)
from qgjob_backend.domain.planner import BacklogJob, BusyAgent, IdleAgent
from tests.unit.backlog import backlog_jobs

NOW = 10_000.0
INSTALL = {"emulator": 60.0, "device": 120.0, "browserstack": 90.0}
POLICY = OverflowPolicy()


jobs = functools.partial(backlog_jobs, enqueued_at=NOW)


def busy_emulators(count: int, free_in: float, group: str = "acme/v1/emulator") -> list[BusyAgent]:
    return [BusyAgent(f"emu-{i}", "emulator", group, NOW + free_in) for i in range(count)]


def idle_bs(count: int) -> list[IdleAgent]:
    return [IdleAgent(f"bs-{i}", "browserstack", None) for i in range(count)]


def ids(backlog: list[BacklogJob]) -> set[str]:
    return {j.job_id for j in backlog}


def test_finish_level_fills_the_earliest_lanes_first() -> None:
    assert finish_level([], 10.0) == math.inf
    assert finish_level([0.0, 0.0], 0.0) == 0.0
    assert finish_level([0.0, 0.0], 100.0) == 50.0
    # 100 s fill the first lane up to the second's 60, then 40 s are shared by both.
    assert finish_level([0.0, 60.0], 100.0) == 80.0
    assert finish_level([0.0, 60.0], 30.0) == 30.0
    assert finish_level([5.0, 10.0, 20.0], 25.0) == 20.0  # 15 + 10 + 0
    assert finish_level([5.0, 10.0, 20.0], 31.0) == 22.0


def test_a_saturated_pool_moves_its_tail_until_browserstack_would_gain_too_little() -> None:
    # Two emulators busy for 1000 s with 60 tests of 60 s waiting: home ends at +2800.
    # Two idle BrowserStack agents (install 90 s). After k moves home ends at
    # 2800 - 30k, and the next move would end on BrowserStack at (90 + 60 (k+1)) / 2; it
    # moves while that is at least the margin (10 % of the home wait) sooner:
    # 75 + 30k <= 0.9 (2800 - 30k), so k = 0..42: 43 moves.
    backlog = jobs("acme", "v1", 60)
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    assert len(moves) == 43
    # From the tail: the last tests of the suite, last first.
    assert [m.job_id for m in moves] == [f"acme-v1-emulator-{i:03d}" for i in range(59, 16, -1)]
    first = moves[0]
    assert first.from_target == "emulator"
    assert first.to_target == "browserstack"
    assert first.from_group_key == "acme/v1/emulator"
    assert first.to_group_key == "acme/v1/browserstack"
    assert first.home_finish_at == NOW + 2800.0
    assert first.remote_finish_at == NOW + 150.0  # the upload (install) and the test
    for move in moves:
        assert move.remote_finish_at <= move.home_finish_at - POLICY.margin_s(
            NOW, move.home_finish_at
        )


def test_nothing_moves_without_the_allowance() -> None:
    backlog = jobs("acme", "v1", 60)
    allowed = {j.job_id for j in backlog[:10]}  # only the suite's first ten may move
    moves = plan_overflow(
        backlog, set(), idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    assert moves == []
    moved = plan_overflow(
        backlog, allowed, idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    assert {m.job_id for m in moved} == allowed


def test_nothing_moves_without_browserstack_agents() -> None:
    backlog = jobs("acme", "v1", 60)
    moves = plan_overflow(backlog, ids(backlog), [], NOW, POLICY, busy_emulators(2, 1000.0))
    assert moves == []


def test_nothing_moves_when_the_home_pool_has_idle_agents() -> None:
    backlog = jobs("acme", "v1", 4)
    idle = [IdleAgent(f"emu-{i}", "emulator", AppRef("acme", "v1")) for i in range(4)]
    moves = plan_overflow(backlog, ids(backlog), idle + idle_bs(2), NOW, POLICY, (), INSTALL)
    assert moves == []


def test_browserstacks_own_queue_counts() -> None:
    backlog = jobs("acme", "v1", 20)  # home ends at +1000 + 600
    own = jobs("globex", "g1", 60, target="browserstack", estimate_s=100.0)
    allowed = ids(backlog)
    # Alone, BrowserStack would take some of them ...
    alone = plan_overflow(
        backlog, allowed, idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    assert alone
    # ... but 6000 s of its own work ahead (3000 s on two agents) makes it later.
    busy_remote = plan_overflow(
        backlog + own, allowed, idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    assert busy_remote == []


def test_browserstacks_install_counts() -> None:
    backlog = jobs("acme", "v1", 20)
    slow_upload = dict(INSTALL, browserstack=1500.0)
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), slow_upload
    )
    assert moves == []
    # The same upload is free for a group whose app a BrowserStack agent already holds.
    warm = [IdleAgent("bs-0", "browserstack", AppRef("acme", "v1"))]
    moves = plan_overflow(
        backlog, ids(backlog), warm, NOW, POLICY, busy_emulators(2, 1000.0), slow_upload
    )
    assert moves


def test_the_margin_decides_a_close_call() -> None:
    # Home ends at +1000 + 60 = +1060 ... with one agent and one job; BrowserStack would
    # take 90 + 60 = 150 s. Gain 910 s: below a margin of 1000 s, above one of 100 s.
    backlog = jobs("acme", "v1", 1)
    home = busy_emulators(1, 1000.0)
    strict = OverflowPolicy(min_gain_s=1000.0)
    loose = OverflowPolicy(min_gain_s=100.0, min_gain_fraction=0.0)
    assert plan_overflow(backlog, ids(backlog), idle_bs(1), NOW, strict, home, INSTALL) == []
    assert plan_overflow(backlog, ids(backlog), idle_bs(1), NOW, loose, home, INSTALL)


def test_moves_per_call_are_bounded() -> None:
    backlog = jobs("acme", "v1", 500)
    policy = OverflowPolicy(max_moves=7)
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(20), NOW, policy, busy_emulators(1, 5000.0), INSTALL
    )
    assert len(moves) == 7


def test_browserstack_jobs_never_move_and_devices_do() -> None:
    own = jobs("acme", "v1", 5, target="browserstack")
    devices = jobs("acme", "v1", 30, target="device")
    busy_devices = [BusyAgent("dev-0", "device", "acme/v1/device", NOW + 3000.0)]
    moves = plan_overflow(
        own + devices, ids(own + devices), idle_bs(3), NOW, POLICY, busy_devices, INSTALL
    )
    assert moves
    assert {m.from_target for m in moves} == {"device"}
    assert not {m.job_id for m in moves} & ids(own)


def test_least_urgent_work_moves_first_never_an_urgent_job_before_it() -> None:
    urgent = jobs("acme", "hot", 10, priority=1)
    routine = jobs("acme", "v1", 10, priority=5)
    backlog = urgent + routine
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(2), NOW, POLICY, busy_emulators(2, 2000.0), INSTALL
    )
    moved = [m.job_id for m in moves]
    assert set(moved) >= ids(routine)  # every routine job moves before any urgent one
    assert moved[: len(routine)] == [j.job_id for j in reversed(routine)]


@pytest.mark.parametrize("seed", range(30))
def test_moved_jobs_are_always_a_tail_of_the_home_order(seed: int) -> None:
    """Random backlogs: what moves is exactly the first n of the tail-first order of the
    allowed jobs, per home pool, and a second call over the moved backlog never moves a
    job again (moved jobs are BrowserStack jobs now)."""
    rng = random.Random(seed)
    backlog: list[BacklogJob] = []
    for g in range(rng.randint(1, 5)):
        target = rng.choice(["emulator", "device"])
        backlog += jobs(
            "org",
            f"v{g}",
            rng.randint(1, 30),
            target=target,
            priority=rng.choice([1, 3, 5, 5, 8]),
            enqueued_at=NOW - rng.uniform(0, 600),
            estimate_s=rng.choice([None, 20.0, 60.0, 240.0]),
        )
    allowed = {j.job_id for j in backlog if rng.random() < 0.8}
    busy = [
        BusyAgent(f"{t[:3]}-{i}", t, "org/v0/" + t, NOW + rng.uniform(0, 3000))
        for t in ("emulator", "device")
        for i in range(rng.randint(1, 3))
    ]
    remote = idle_bs(rng.randint(1, 4))
    moves = plan_overflow(backlog, allowed, remote, NOW, POLICY, busy, INSTALL)
    assert {m.job_id for m in moves} <= allowed
    by_id = {j.job_id: j for j in backlog}
    for target in ("emulator", "device"):
        moved = [by_id[m.job_id] for m in moves if m.from_target == target]
        stay = [j for j in backlog if j.target == target and j.job_id in allowed and j not in moved]
        # No job that stays is one the home pool would reach after a moved one.
        for kept in stay:
            for gone in moved:
                assert _reached_before(kept, gone, backlog), (kept.job_id, gone.job_id)
    after = apply_moves(backlog, moves)
    again = plan_overflow(after, allowed, remote, NOW, POLICY, busy, INSTALL)
    assert not {m.job_id for m in again} & {m.job_id for m in moves}


def _reached_before(a: BacklogJob, b: BacklogJob, backlog: list[BacklogJob]) -> bool:
    """True when the home pool runs ``a`` before ``b``: a's group is more urgent (or
    older), or in the same group ``a`` comes first in run order."""

    def group(job: BacklogJob) -> tuple[int, float, str]:
        members = [j for j in backlog if j.group_key == job.group_key]
        return (
            min(j.priority for j in members),
            min(j.enqueued_at for j in members),
            job.group_key,
        )

    def inside(job: BacklogJob) -> tuple[int, float, float, int, str]:
        estimate = job.estimate_s if job.estimate_s is not None else 90.0
        return (job.priority, job.enqueued_at, -estimate, job.position, job.job_id)

    if a.group_key != b.group_key:
        return group(a) < group(b)
    return inside(a) < inside(b)


def test_apply_moves_puts_moved_jobs_in_their_browserstack_group() -> None:
    backlog = jobs("acme", "v1", 60)
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(2), NOW, POLICY, busy_emulators(2, 1000.0), INSTALL
    )
    after = apply_moves(backlog, moves)
    moved = {m.job_id for m in moves}
    assert len(after) == len(backlog)
    for job in after:
        if job.job_id in moved:
            assert (job.target, job.group_key) == ("browserstack", "acme/v1/browserstack")
        else:
            assert (job.target, job.group_key) == ("emulator", "acme/v1/emulator")


def test_a_tail_job_that_cannot_gain_keeps_the_more_urgent_ones_home() -> None:
    # The home pool reaches the priority-8 job last; it is too long to gain on a
    # BrowserStack agent busy for 3000 s, so the priority-5 jobs before it do not jump it
    # (they would gain: 3000 + 90 + 60 s against a home end of +4720).
    late = jobs("acme", "late", 1, priority=8, estimate_s=3000.0)
    early = jobs("acme", "early", 10, priority=5)
    backlog = late + early
    remote = [BusyAgent("bs-0", "browserstack", "other/x/browserstack", NOW + 3000.0)]
    home = busy_emulators(1, 1000.0)
    moves = plan_overflow(backlog, ids(backlog), [], NOW, POLICY, home + remote, INSTALL)
    assert moves == []
    # When the long job may not move, it still holds the home pool up, and the others move.
    assert plan_overflow(backlog, ids(early), [], NOW, POLICY, home + remote, INSTALL)


def test_every_browserstack_lane_pays_the_upload_so_a_slow_one_keeps_a_group_on_one() -> None:
    # A 1800 s upload: a second lane would shorten the moved group by less than an upload,
    # so it runs on one lane: after k moves the next ends at 1800 + 60 (k + 1), against a
    # home end of 1000 + 1800 - 60k (one busy emulator): 1860 + 60k <= 0.9 (2800 - 60k)
    # holds for k = 0..5: 6 moves (spreading the group over the 4 lanes would move 20).
    backlog = jobs("acme", "v1", 30)
    slow_upload = dict(INSTALL, browserstack=1800.0)
    moves = plan_overflow(
        backlog, ids(backlog), idle_bs(4), NOW, POLICY, busy_emulators(1, 1000.0), slow_upload
    )
    assert len(moves) == 6
    assert moves[-1].remote_finish_at == NOW + 1800.0 + 6 * 60.0


def test_a_lane_holding_the_app_runs_the_group_unless_a_new_one_is_much_sooner() -> None:
    # A BrowserStack agent holds acme/v1 and is busy until +300 with its other work; its
    # next job there ends at +360. Installing on an idle lane ends at 90 + 60 = +150: sooner
    # by less than the split gain (300 s), so the estimate keeps it on the holding lane.
    backlog = jobs("acme", "v1", 1)
    holder = BusyAgent("bs-0", "browserstack", "acme/v1/browserstack", NOW + 300.0)
    home = busy_emulators(1, 3000.0)
    moves = plan_overflow(backlog, ids(backlog), idle_bs(1), NOW, POLICY, [*home, holder], INSTALL)
    assert [m.remote_finish_at for m in moves] == [NOW + 360.0]
    # Busy until +500, the holding lane would end at +560: the new lane, 410 s sooner, wins.
    later = BusyAgent("bs-0", "browserstack", "acme/v1/browserstack", NOW + 500.0)
    moves = plan_overflow(backlog, ids(backlog), idle_bs(1), NOW, POLICY, [*home, later], INSTALL)
    assert [m.remote_finish_at for m in moves] == [NOW + 150.0]
