"""An org's default overflow through the real handlers and the admin CLI on moto: an
operator sets it (`python -m infra.admin orgs set`), a run submitted without ``overflow``
takes it and shows ``overflow: browserstack`` like an explicit one (and its jobs move),
``"overflow": "none"`` opts out, a bad value is a 422 naming the field, and a submission
reads the setting with one GetItem."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from infra.admin import StackResources, main
from qgjob_backend.adapters.dynamodb.org_settings import org_settings_key
from qgjob_backend.config import Config
from tests.integration.conftest import AgentCaller, ApiCaller
from tests.integration.test_admin_cli import Admin
from tests.integration.test_admin_cli import clock as clock  # the fixture
from tests.integration.test_admin_cli import stack as stack  # the fixture
from tests.integration.test_overflow_api import busy_emulator_pool, run_batch, run_jobs, suite
from tests.unit.fakes import FakeClock


@pytest.fixture
def admin(stack: StackResources, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> Admin:
    return Admin(stack, clock, capsys)


def overflow_of(client: ApiCaller, **fields: Any) -> Any:
    created = client.post("/runs", suite("v1", 2, **fields))
    assert created.status == 201, created.body
    view = client.get(f"/runs/{created.body['run_id']}").body
    return view["overflow"]


# ------------------------------------------------------------------ the admin CLI


def test_orgs_show_set_and_set_again(admin: Admin, clock: FakeClock) -> None:
    never = admin.json("orgs", "show", "--org-id", "acme")
    assert never == {"org_id": "acme", "overflow": None, "updated_at": None, "version": 0}
    code, out = admin.run("orgs", "show", "--org-id", "acme")
    assert code == 0
    assert "never overflow" in out
    assert "never set" in out

    first = admin.json("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")
    assert first == {
        "changed": True,
        "settings": {
            "org_id": "acme",
            "overflow": "browserstack",
            "updated_at": clock.now,
            "version": 1,
        },
    }
    again = admin.json("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")
    assert again == {**first, "changed": False}
    code, out = admin.run("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")
    assert code == 0
    assert "overflow to browserstack" in out
    assert "nothing changed" in out
    assert admin.json("orgs", "show", "--org-id", "acme") == first["settings"]
    assert admin.json("orgs", "show", "--org-id", "globex")["overflow"] is None

    cleared = admin.json("orgs", "set", "--org-id", "acme", "--overflow", "none")
    assert (cleared["changed"], cleared["settings"]["overflow"]) == (True, None)
    assert cleared["settings"]["version"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["orgs", "set", "--org-id", "acme", "--overflow", "device"],
        ["orgs", "set", "--org-id", "acme"],
        ["orgs", "set", "--org-id", "a/b", "--overflow", "none"],
        ["orgs", "show"],
    ],
)
def test_orgs_usage_errors_exit_2_naming_the_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert ("--overflow" if "acme" in argv else "--org-id") in err


def test_orgs_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["orgs", "--help"], ["orgs", "set", "--help"], ["orgs", "show", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "python -m infra.admin orgs " in capsys.readouterr().out


# ------------------------------------------------------------------- submissions


def test_a_run_without_overflow_takes_the_org_default_and_shows_it(
    admin: Admin, client: ApiCaller
) -> None:
    assert overflow_of(client) is None
    admin.json("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")

    assert overflow_of(client) == "browserstack"
    assert overflow_of(client, target="device") == "browserstack"
    assert overflow_of(client, overflow="none") is None
    assert overflow_of(client, target="browserstack") is None
    assert overflow_of(client, target="browserstack", overflow="none") is None


def test_a_run_that_took_the_default_has_its_jobs_moved(
    admin: Admin, client: ApiCaller, agent_client: AgentCaller
) -> None:
    busy_emulator_pool(client, agent_client)
    admin.json("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")
    run = client.post("/runs", suite("v1", 30)).body
    registered = agent_client.post(
        "/agents/register", {"target": "browserstack", "device_id": "b1"}
    )
    assert registered.status == 200

    leased = agent_client.post("/agents/browserstack-b1/lease").body["batch"]

    assert leased is not None
    run_batch(agent_client, "browserstack-b1", leased)
    view = client.get(f"/runs/{run['run_id']}").body
    moved = [j for j in run_jobs(client, run["run_id"]) if j["moved_from"] == "emulator"]
    assert (view["overflow"], view["moved"]) == ("browserstack", len(moved))
    assert {j["job_id"] for j in leased["jobs"]} <= {j["job_id"] for j in moved}


@pytest.mark.parametrize("value", ["sometimes", "None", "", 1, True, ["browserstack"]])
def test_a_bad_overflow_is_a_422_naming_the_field(client: ApiCaller, value: Any) -> None:
    for path, body in (
        ("/runs", suite("v1", 1, overflow=value)),
        (
            "/jobs",
            {"org_id": "acme", "app_version_id": "v1", "test_path": "t.js", "overflow": value},
        ),
    ):
        response = client.post(path, body)
        assert response.status == 422, (path, response.body)
        assert "overflow" in response.body["message"]


class KeyReads:
    """The key of every GetItem the session's clients make (a botocore event hook)."""

    def __init__(self, session: boto3.Session) -> None:
        self.reads: list[tuple[str, str, bool | None]] = []
        session.events.register("before-parameter-build.dynamodb.GetItem", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        key = next(iter(params["Key"].values()))["S"]
        self.reads.append((params["TableName"], key, params.get("ConsistentRead")))


@pytest.fixture
def key_reads(aws_session: boto3.Session) -> KeyReads:
    # Listed before `client` in a test, so the hook is there before any client is built.
    return KeyReads(aws_session)


def test_a_submission_reads_the_setting_with_one_eventually_consistent_get_item(
    key_reads: KeyReads, admin: Admin, client: ApiCaller, config: Config
) -> None:
    admin.json("orgs", "set", "--org-id", "acme", "--overflow", "browserstack")
    setting = (config.runs_table, org_settings_key("acme"))
    for tests, target in ((1, "emulator"), (40, "device"), (3, "browserstack")):
        key_reads.reads.clear()
        created = client.post("/runs", suite(f"v{tests}", tests, target=target))
        assert created.status == 201, created.body
        reads = [r for r in key_reads.reads if r[:2] == setting]
        # Emulator and device runs read it once; a BrowserStack run has nothing to read.
        assert reads == ([] if target == "browserstack" else [(*setting, False)])
