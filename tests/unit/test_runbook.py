"""docs/RUNBOOK.md keeps up with template.yaml: every alarm has an entry under its logical
id, and the docs the README links to exist."""

from __future__ import annotations

import re
from pathlib import Path

from infra.template import load_template

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"


def test_every_alarm_of_the_template_has_a_runbook_entry() -> None:
    alarms = sorted(
        logical_id
        for logical_id, resource in load_template()["Resources"].items()
        if resource.get("Type") == "AWS::CloudWatch::Alarm"
    )
    headings = [line for line in RUNBOOK.read_text().splitlines() if line.startswith("### ")]
    covered = {name for line in headings for name in re.findall(r"`([A-Za-z0-9]+)`", line)}

    assert alarms, "the template defines no alarm"
    assert [a for a in alarms if a not in covered] == []


def test_the_docs_the_readme_and_the_runbook_link_exist() -> None:
    pages = [ROOT / "README.md", RUNBOOK, ROOT / "docs" / "KNOWN_LIMITS.md"]
    pages += sorted((ROOT / "docs" / "adr").glob("*.md"))
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
            checked += 1
    assert checked > 20
