"""The per-function build (infra/lambda_build.py) and the lock it installs from.

Offline: the full staleness check (`make lock-check`) and `make build` need PyPI and run
in CI's build job; these guard what can break without it.
"""

from __future__ import annotations

import importlib.metadata
import re
import stat
import sys
from pathlib import Path

import pytest

from infra import lambda_build
from infra.template import FUNCTION_TYPE, load_template
from tests.unit.sam_template import resources, source_template


def _functions() -> dict[str, dict]:
    return resources(source_template(), FUNCTION_TYPE)


def test_the_line_reader_finds_every_function_and_handler_the_yaml_has() -> None:
    from_yaml = {name: props["Handler"] for name, props in _functions().items()}
    assert lambda_build.function_handlers() == from_yaml
    assert len(from_yaml) >= 5


def test_every_function_is_built_by_the_makefile() -> None:
    template = load_template()
    for name in _functions():
        assert template["Resources"][name].get("Metadata") == {"BuildMethod": "makefile"}, name
    assert (lambda_build.FUNCTIONS_DIR / "Makefile").is_file()


def test_runtime_is_read_from_the_globals() -> None:
    globals_ = source_template()["Globals"]["Function"]
    version, arch = lambda_build.runtime()
    assert globals_["Runtime"] == f"python{version}"
    assert globals_["Architectures"] == [arch]
    # One Python and platform for every package: no function overrides them.
    for name, props in _functions().items():
        assert "Runtime" not in props, name
        assert "Architectures" not in props, name


def test_each_plan_has_its_handler_and_no_sdk() -> None:
    for name, handler in lambda_build.function_handlers().items():
        plan = lambda_build.plan(name)
        assert handler.rsplit(".", 1)[0] in plan.modules
        assert not set(plan.distributions) & lambda_build.RUNTIME_PROVIDED
        # The SDK's own dependencies come only when something bundled needs them.
        assert "python-dateutil" not in plan.distributions
        assert "six" not in plan.distributions
    vault = lambda_build.plan("VaultFunction")
    assert {"requests", "urllib3", "pydantic", "pydantic-core"} <= set(vault.distributions)
    assert "qgjob_backend.handlers.api" not in vault.modules


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_import_closure_follows_our_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = _package(
        tmp_path,
        {
            "qgjob_backend/__init__.py": "",
            "qgjob_backend/handlers/__init__.py": "",
            "qgjob_backend/handlers/h.py": (
                "from typing import TYPE_CHECKING\n"
                "import json\n"
                "from qgjob_backend.services import used\n"
                "from ..domain import model\n"
                "if TYPE_CHECKING:\n"
                "    from qgjob_backend import typing_only\n"
                "    import mypy_boto3_sqs\n"
                "def later():\n"
                "    import requests\n"
            ),
            "qgjob_backend/services/__init__.py": "",
            "qgjob_backend/services/used.py": "import pydantic.fields\n",
            "qgjob_backend/domain/__init__.py": "",
            "qgjob_backend/domain/model.py": "from . import sibling\n",
            "qgjob_backend/domain/sibling.py": "",
            "qgjob_backend/typing_only.py": "import boto3\n",
            "qgjob_backend/unused.py": "import yaml\n",
        },
    )
    closure = lambda_build.import_closure("qgjob_backend.handlers.h", source)
    assert closure.modules == {
        "qgjob_backend",
        "qgjob_backend.handlers",
        "qgjob_backend.handlers.h",
        "qgjob_backend.services",
        "qgjob_backend.services.used",
        "qgjob_backend.domain",
        "qgjob_backend.domain.model",
        "qgjob_backend.domain.sibling",
    }
    assert closure.external == {"requests", "pydantic"}


def test_an_import_no_pin_provides_fails_the_build() -> None:
    pins = lambda_build.read_lock()
    with pytest.raises(lambda_build.BuildError, match=r"'yaml'.*requirements\.txt"):
        lambda_build.distributions_for({"yaml"}, pins)


def test_the_closure_stops_at_the_runtime_sdk() -> None:
    pins = lambda_build.read_lock()
    assert lambda_build.distributions_for({"boto3", "botocore"}, pins) == []
    needed = lambda_build.distributions_for({"aws_lambda_powertools"}, pins)
    assert "jmespath" in needed  # Powertools' own dependency, bundled
    assert "botocore" not in needed  # even when aws-xray-sdk (the tracer extra) wants it


def test_the_lock_pins_every_requirement_with_hashes() -> None:
    pins = lambda_build.read_lock()
    for pin in pins.values():
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", pin.requirement), pin.name
    requirements = lambda_build.FUNCTIONS_DIR / "requirements.txt"
    declared = {
        lambda_build.normalize(re.split(r"[\[<>=!~; ]", line.strip(), maxsplit=1)[0])
        for line in requirements.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    # The lock's top-level pins ("# via -r functions/requirements.txt") are the declared
    # ones: a requirement added or removed without `make lock` fails here, offline.
    top_level = {name for name, pin in pins.items() if "-r" in pin.via}
    assert top_level == declared, "functions/requirements.txt changed: run `make lock`"


def test_the_tests_run_the_locked_versions() -> None:
    """`make venv` installs the lock first: what is tested is what is packaged."""
    for pin in lambda_build.read_lock().values():
        version = pin.requirement.split("==", 1)[1].split()[0]
        assert importlib.metadata.version(pin.name) == version, (pin.name, "run `make venv`")


def _fake_python(path: Path, prints: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {prints}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_python_prefers_a_working_one_over_a_broken_shim(tmp_path: Path) -> None:
    shim = tmp_path / "bin" / "python3.12"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    installed = _fake_python(tmp_path / "pyenv/versions/3.12.1/bin/python3.12", "3.12")
    env = {"PATH": str(shim.parent), "PYENV_ROOT": str(tmp_path / "pyenv")}
    assert lambda_build.find_python("3.12", env) == str(installed)
    explicit = _fake_python(tmp_path / "elsewhere/python", "3.12")
    assert lambda_build.find_python("3.12", {**env, "QGJOB_LAMBDA_PYTHON": str(explicit)}) == str(
        explicit
    )


def test_find_python_says_how_to_get_one(tmp_path: Path) -> None:
    _fake_python(tmp_path / "pyenv/versions/3.11.7/bin/python3.12", "3.11")
    env = {"PATH": str(tmp_path / "nothing"), "PYENV_ROOT": str(tmp_path / "pyenv")}
    with pytest.raises(lambda_build.BuildError) as error:
        lambda_build.find_python("3.12", env)
    message = str(error.value)
    assert "pyenv install 3.12" in message
    assert "QGJOB_LAMBDA_PYTHON" in message


def _tiny_project(tmp_path: Path, runtime: str) -> tuple[Path, Path]:
    """A template with one function and a functions/ tree that imports only the stdlib."""
    template = tmp_path / "template.yaml"
    template.write_text(
        "Globals:\n  Function:\n"
        f"    Runtime: python{runtime}\n    Architectures: [x86_64]\n"
        "Resources:\n  TinyFunction:\n    Type: AWS::Serverless::Function\n"
        "    Properties:\n      Handler: qgjob_backend.handlers.tiny.lambda_handler\n",
        encoding="utf-8",
    )
    source = _package(
        tmp_path / "functions",
        {
            "qgjob_backend/__init__.py": "",
            "qgjob_backend/handlers/__init__.py": "",
            "qgjob_backend/handlers/tiny.py": "import json\nfrom qgjob_backend import util\n",
            "qgjob_backend/util.py": "",
            "qgjob_backend/unused.py": "",
            "requirements.lock": f"six==1.17.0 \\\n    --hash=sha256:{'0' * 64}\n",
        },
    )
    return template, source


def test_package_copies_only_the_reached_modules(tmp_path: Path) -> None:
    running = "{}.{}".format(*sys.version_info[:2])
    template, source = _tiny_project(tmp_path, running)
    out = tmp_path / "out"
    plan = lambda_build.package("TinyFunction", out, source, template)
    assert plan.distributions == []  # six is locked but not imported: not installed
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "qgjob_backend/__init__.py",
        "qgjob_backend/handlers/__init__.py",
        "qgjob_backend/handlers/tiny.py",
        "qgjob_backend/util.py",
    ]


def test_package_refuses_another_python_than_the_runtime(tmp_path: Path) -> None:
    template, source = _tiny_project(tmp_path, "3.99")
    with pytest.raises(lambda_build.BuildError, match=r"python3\.99"):
        lambda_build.package("TinyFunction", tmp_path / "out", source, template)
