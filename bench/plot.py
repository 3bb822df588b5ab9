"""A device-lane timeline of a schedule: one lane per agent, installs dark, tests coloured
by family (consecutive tests of one family drawn as one bar). matplotlib, Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.simulator import Segment

INSTALL_COLOUR = "#222222"


def _runs(lane: Sequence[Segment]) -> list[tuple[str, str, float, float]]:
    """(kind, app key, start, end): consecutive tests of one app merged into one run."""
    runs: list[tuple[str, str, float, float]] = []
    for seg in lane:
        key = f"{seg.org_id}/{seg.app_version_id}"
        last = runs[-1] if runs else None
        if (
            seg.kind == "test"
            and last is not None
            and last[0] == "test"
            and last[1] == key
            and abs(last[3] - seg.start_s) < 1e-6
        ):
            runs[-1] = ("test", key, last[2], seg.end_s)
        else:
            runs.append((seg.kind, key, seg.start_s, seg.end_s))
    return runs


def draw_timeline(
    schedule: Mapping[str, Sequence[Segment]], path: str | Path, title: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = sorted(schedule)
    families: dict[str, int] = {}
    for agent in agents:
        for seg in schedule[agent]:
            families.setdefault(f"{seg.org_id}/{seg.app_version_id}", len(families))
    palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    height = max(2.5, 0.16 * len(agents) + 1.2)
    fig, ax = plt.subplots(figsize=(10, height), dpi=90)
    for row, agent in enumerate(agents):
        for kind, key, start, end in _runs(schedule[agent]):
            colour = INSTALL_COLOUR if kind == "install" else palette[families[key] % len(palette)]
            ax.broken_barh([(start, end - start)], (row - 0.4, 0.8), facecolors=colour, lw=0)
    ax.set_yticks(range(len(agents)))
    ax.set_yticklabels(agents, fontsize=6 if len(agents) > 30 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)   dark = install, colour = app version (family)")
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
