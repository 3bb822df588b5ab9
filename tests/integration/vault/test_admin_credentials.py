"""`python -m infra.admin set-browserstack-credentials`: where the vault reads them, as a
SecureString, with the access key never on the command line nor in the output."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import pytest

from infra.admin import main as admin_main
from qgjob_backend.adapters.browserstack import SsmCredentials
from tests.integration.vault.conftest import ACCESS_KEY, USERNAME, Aws


@pytest.fixture
def admin_env(aws: Aws, aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The operator's shell: AWS pointed at the emulator; yields a stack name of its own."""
    for name, value in {
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BROWSERSTACK_ACCESS_KEY", raising=False)
    monkeypatch.delenv("BROWSERSTACK_USERNAME", raising=False)
    stack = f"admin-{uuid.uuid4().hex[:8]}"
    yield stack
    names = [f"/{stack}/browserstack/acme"]
    aws.ssm.delete_parameters(Names=names)


def test_the_access_key_from_stdin_is_stored_where_the_vault_reads_it(
    aws: Aws, admin_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ACCESS_KEY + "\n"))

    code = admin_main(
        ["set-browserstack-credentials", "--org-id", "acme", "--username", USERNAME,
         "--stack-name", admin_env]
    )  # fmt: skip

    out = capsys.readouterr()
    assert code == 0, out.err
    assert ACCESS_KEY not in out.out + out.err
    parameter = aws.ssm.get_parameter(Name=f"/{admin_env}/browserstack/acme")["Parameter"]
    assert parameter["Type"] == "SecureString"
    stored = aws.ssm.get_parameter(Name=parameter["Name"], WithDecryption=True)
    assert json.loads(stored["Parameter"]["Value"]) == {
        "username": USERNAME,
        "access_key": ACCESS_KEY,
    }
    creds = SsmCredentials(aws.ssm, f"/{admin_env}/browserstack")("acme")
    assert (creds.username, creds.access_key) == (USERNAME, ACCESS_KEY)
    assert ACCESS_KEY not in repr(creds)


def test_a_bad_org_id_or_an_empty_key_is_refused(
    admin_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    base = ["set-browserstack-credentials", "--username", USERNAME, "--stack-name", admin_env]

    assert admin_main([*base, "--org-id", "acme"]) == 2
    assert "must not be empty" in capsys.readouterr().err
    monkeypatch.setenv("BROWSERSTACK_ACCESS_KEY", ACCESS_KEY)
    assert admin_main([*base, "--org-id", "../other"]) == 2
    assert "not a valid org id" in capsys.readouterr().err
