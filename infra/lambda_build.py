"""Builds one Lambda package per function: only the code and distributions it imports.

`sam build` runs this through functions/Makefile (``BuildMethod: makefile``), once per
function, with a Python matching the template's ``Runtime``. It uses the standard library
only: that interpreter is a bare python3.12, not the project's virtualenv.

What goes into a function's package:
- our modules: the handler's module and every ``qgjob_backend`` module it imports,
  transitively (a static walk of the source, imports inside functions included, those
  under ``if TYPE_CHECKING:`` not);
- the distributions those modules import, with their dependencies, as pinned (with
  hashes) in functions/requirements.lock, installed by pip in hash-checking mode as wheels
  for the Lambda platform (manylinux, CPython of the runtime's version, the template's
  architecture), so the package is the same whatever machine builds it;
- not the AWS SDK (boto3, botocore): the Lambda runtime provides it, and bundling it
  would add about 25 MB to every function. Their own dependencies come along only when
  another distribution needs them (requests needs urllib3, Powertools jmespath).

Subcommands: ``package`` (what the Makefile calls), ``find-python`` (prints a Python of
the runtime's version, or says how to get one), ``plan`` (prints what ``package`` would
install, without installing) and ``sizes`` (the size of each built package).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
FUNCTIONS_DIR = ROOT / "functions"
LOCK = FUNCTIONS_DIR / "requirements.lock"
OWN_PACKAGE = "qgjob_backend"

# The Lambda Python runtimes ship the AWS SDK; a package that carried its own would
# shadow it for 25 MB. Their other dependencies are not listed here: they are bundled
# when something we bundle needs them.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})

# Import names that differ from their distribution's normalized name.
IMPORT_TO_DISTRIBUTION = {"dateutil": "python-dateutil", "yaml": "pyyaml"}

# Wheel platform tags a Lambda x86_64 / arm64 runtime on Amazon Linux 2023 (glibc 2.34)
# accepts, newest first. pip matches tags exactly, hence the legacy aliases.
_MANYLINUX = ("2_34", "2_28", "2_17", "2014", "2_5", "1")

EXIT_USAGE = 2


class BuildError(Exception):
    """A build step that cannot go on; the message says what to change."""


# ------------------------------------------------------------------ template


def _resource_blocks(text: str) -> Iterator[tuple[str, list[str]]]:
    """(logical id, its lines) for each resource under ``Resources:`` (2-space indent)."""
    in_resources = False
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\S", line):
            if current is not None:
                yield current, lines
                current = None
            in_resources = line.rstrip() == "Resources:"
            continue
        if not in_resources:
            continue
        match = re.match(r"^  ([A-Za-z0-9]+):\s*(#.*)?$", line)
        if match:
            if current is not None:
                yield current, lines
            current, lines = match.group(1), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        yield current, lines


def _scalar(lines: Iterable[str], key: str) -> str | None:
    for line in lines:
        match = re.match(rf"^\s+{key}:\s*([^#\s]+)", line)
        if match:
            return match.group(1).strip("\"'")
    return None


def function_handlers(template: Path = TEMPLATE) -> dict[str, str]:
    """Handler of each AWS::Serverless::Function, read without a YAML library.

    A bare interpreter has no PyYAML. The template keeps these keys in plain block style;
    tests/unit/test_lambda_build.py checks this reading against the YAML one.
    """
    handlers = {}
    for logical_id, lines in _resource_blocks(template.read_text(encoding="utf-8")):
        if _scalar(lines, "Type") == "AWS::Serverless::Function":
            handler = _scalar(lines, "Handler")
            if handler is None:
                raise BuildError(f"{template}: {logical_id} has no Handler")
            handlers[logical_id] = handler
    return handlers


def runtime(template: Path = TEMPLATE) -> tuple[str, str]:
    """(Python version, architecture) of the template's Globals: ("3.12", "x86_64")."""
    text = template.read_text(encoding="utf-8")
    version = re.search(r"^\s+Runtime:\s*python(\d+\.\d+)\s*$", text, re.MULTILINE)
    arch = re.search(r"^\s+Architectures:\s*\[\s*(\w+)\s*\]", text, re.MULTILINE)
    if version is None:
        raise BuildError(f"{template}: no `Runtime: pythonX.Y` line")
    return version.group(1), arch.group(1) if arch else "x86_64"


# ------------------------------------------------------------- import graph


@dataclass
class ImportClosure:
    modules: set[str] = field(default_factory=set)  # our modules, dotted
    external: set[str] = field(default_factory=set)  # top-level names of the rest


def _module_file(source: Path, dotted: str) -> Path | None:
    base = source.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names a module imports (``from a import b`` yields a and a.b)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def import_closure(handler_module: str, source: Path) -> ImportClosure:
    """Every module of ours the handler's module reaches, and the external names."""
    closure = ImportClosure()
    pending = [handler_module]
    while pending:
        dotted = pending.pop()
        # A module's packages run first: include every parent's __init__.
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in closure.modules:
                continue
            path = _module_file(source, name)
            if path is None:
                continue  # `from pkg import name` where name is not a module
            closure.modules.add(name)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for imported in _imports(tree, name, path.name == "__init__.py"):
                top = imported.split(".")[0]
                if top == OWN_PACKAGE:
                    pending.append(imported)
                elif top and top not in sys.stdlib_module_names:
                    closure.external.add(top)
    if handler_module not in closure.modules:
        raise BuildError(f"no module {handler_module} under {source}")
    return closure


# --------------------------------------------------------------------- lock


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str
    requirement: str  # the lock's text for it: "name==version \\\n    --hash=..."
    via: set[str] = field(default_factory=set)


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """The lock's pins by normalized name, with who needs each (its ``# via`` notes)."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==\S+", line)
        if match:
            current = Pin(normalize(match.group(1)), line)
            pins[current.name] = current
            in_via = False
        elif current is None:
            continue
        elif line.startswith("    --hash="):
            current.requirement += "\n" + line
        elif via := re.match(r"^\s+# via\s*(\S.*)?$", line):
            in_via = True
            if via.group(1):
                current.via.add(normalize(via.group(1).split()[0]))
        elif in_via and (more := re.match(r"^\s+#\s+(\S+)", line)):
            current.via.add(normalize(more.group(1)))
        else:
            in_via = False
    if not pins:
        raise BuildError(f"{path}: no pinned requirement (run `make lock`)")
    return pins


def distributions_for(external: Iterable[str], pins: dict[str, Pin]) -> list[str]:
    """The lock's distributions that provide these imports, with their dependencies."""
    needed: set[str] = set()
    for top in sorted(external):
        dist = normalize(IMPORT_TO_DISTRIBUTION.get(top, top))
        if dist in RUNTIME_PROVIDED:
            continue
        if dist not in pins:
            raise BuildError(
                f"the code imports {top!r}, which no pin in {LOCK.name} provides: add its "
                "distribution to functions/requirements.txt and run `make lock`"
            )
        needed.add(dist)
    # A pin's dependencies are the pins whose `# via` names it.
    children: dict[str, set[str]] = {}
    for pin in pins.values():
        for parent in pin.via:
            children.setdefault(parent, set()).add(pin.name)
    stack = list(needed)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in needed and child not in RUNTIME_PROVIDED:
                needed.add(child)
                stack.append(child)
    return sorted(needed)


# ------------------------------------------------------------------ package


@dataclass(frozen=True)
class Plan:
    function: str
    handler: str
    modules: list[str]
    distributions: list[str]


def plan(function: str, source: Path = FUNCTIONS_DIR, template: Path = TEMPLATE) -> Plan:
    handlers = function_handlers(template)
    if function not in handlers:
        raise BuildError(f"{template}: no AWS::Serverless::Function {function!r}")
    handler = handlers[function]
    closure = import_closure(handler.rsplit(".", 1)[0], source)
    pins = read_lock(source / LOCK.name)
    return Plan(
        function, handler, sorted(closure.modules), distributions_for(closure.external, pins)
    )


def _pip_platform_args(version: str, arch: str) -> list[str]:
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[arch]
    args = ["--implementation", "cp", "--python-version", version, "--only-binary=:all:"]
    for tag in _MANYLINUX:
        args += ["--platform", f"manylinux{'' if tag in ('2014', '1') else '_'}{tag}_{machine}"]
    return args


def package(function: str, out: Path, source: Path, template: Path = TEMPLATE) -> Plan:
    version, arch = runtime(template)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != version:
        raise BuildError(
            f"building for python{version} with Python {running}: run `make build`, which "
            f"finds a python{version} (see `{sys.executable} infra/lambda_build.py find-python`)"
        )
    the_plan = plan(function, source, template)
    out.mkdir(parents=True, exist_ok=True)
    pins = read_lock(source / LOCK.name)
    with tempfile.TemporaryDirectory() as scratch:
        subset = Path(scratch) / "requirements.txt"
        subset.write_text(
            "\n".join(pins[name].requirement.rstrip(" \\") for name in the_plan.distributions)
            + "\n",
            encoding="utf-8",
        )
        if the_plan.distributions:
            # --no-deps: the subset is closed already (the lock's `# via` graph), less the
            # SDK the runtime provides; hash-checking mode refuses anything unpinned.
            command = [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-compile", "--no-deps", "--require-hashes", "--target", str(out),
                *_pip_platform_args(version, arch), "-r", str(subset),
            ]  # fmt: skip
            subprocess.run(command, check=True)
    shutil.rmtree(out / "bin", ignore_errors=True)
    for dotted in the_plan.modules:
        path = _module_file(source, dotted)
        assert path is not None  # the closure only holds modules it found
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return the_plan


# -------------------------------------------------------------------- sizes


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _zip_bytes(path: Path) -> int:
    with tempfile.TemporaryFile() as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(path))
        return handle.tell()


def sizes(build_dir: Path) -> list[dict[str, object]]:
    rows = []
    for function in sorted(function_handlers()):
        path = build_dir / function
        if not path.is_dir():
            raise BuildError(f"{path} is missing: run `make build` first")
        dists = sorted(re.sub(r"-[^-]+\.dist-info$", "", d.name) for d in path.glob("*.dist-info"))
        rows.append(
            {
                "function": function,
                "unzipped_mb": round(_tree_bytes(path) / 1e6, 2),
                "zipped_mb": round(_zip_bytes(path) / 1e6, 2),
                "distributions": dists,
            }
        )
    return rows


# -------------------------------------------------------------------- smoke


def smoke(build_dir: Path, python: str) -> list[str]:
    """Import each built handler as Lambda would: its package, then only the runtime's SDK.

    Catches a module or distribution the package lacks. The SDK is a fresh boto3 (the
    runtime's exact version is AWS's to choose); nothing from this project's venv is seen,
    and no bytecode is written into the packages (-B).
    """
    failures = []
    with tempfile.TemporaryDirectory() as sdk:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", sdk, "boto3"],
            check=True,
        )  # fmt: skip
        for function, handler in sorted(function_handlers().items()):
            module = handler.rsplit(".", 1)[0]
            code = (
                "import importlib, sys; "
                f"sys.path[:0] = [{str(build_dir / function)!r}, {sdk!r}]; "
                f"handler = getattr(importlib.import_module({module!r}), "
                f"{handler.rsplit('.', 1)[1]!r}); assert callable(handler)"
            )
            env = {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1"}
            result = subprocess.run(
                [python, "-I", "-B", "-c", code],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            status = "ok" if result.returncode == 0 else result.stderr.strip().splitlines()[-1]
            print(f"{function}: import {handler}: {status}")
            if result.returncode:
                failures.append(function)
    return failures


# -------------------------------------------------------------------- python


def _runs(python: str, version: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == version


def find_python(version: str, env: dict[str, str] | None = None) -> str:
    """A python<version> that runs: $QGJOB_LAMBDA_PYTHON, PATH, then pyenv's versions."""
    env = dict(os.environ if env is None else env)
    candidates = []
    if env.get("QGJOB_LAMBDA_PYTHON"):
        candidates.append(env["QGJOB_LAMBDA_PYTHON"])
    on_path = shutil.which(f"python{version}", path=env.get("PATH"))
    if on_path:
        candidates.append(on_path)  # a pyenv shim is here too; it runs only if selected
    pyenv_root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installed = sorted(
        (pyenv_root / "versions").glob(f"{version}.*/bin/python{version}"),
        key=lambda p: [int(n) if n.isdigit() else 0 for n in p.parts[-3].split(".")],
        reverse=True,
    )
    candidates += [str(p) for p in installed]
    for candidate in candidates:
        if _runs(candidate, version):
            return candidate
    raise BuildError(
        f"no Python {version} found (the template's Runtime is python{version}; sam build "
        f"needs the same). Tried: {', '.join(candidates) or 'nothing on PATH or in pyenv'}. "
        f"Get one with `pyenv install {version}` (or apt/brew `python{version}`, or "
        f"actions/setup-python with python-version {version!r}), or point "
        f"QGJOB_LAMBDA_PYTHON at one: `make build QGJOB_LAMBDA_PYTHON=/path/to/python{version}`."
    )


# ---------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser("package", help="build one function's package (functions/Makefile)")
    pkg.add_argument("function", help="logical id, e.g. ApiFunction")
    pkg.add_argument("out", type=Path, help="the artifacts directory ($ARTIFACTS_DIR)")
    pkg.add_argument("--source", type=Path, default=Path.cwd(), help="the functions/ tree")
    sub.add_parser("find-python", help="print a Python matching the template's Runtime")
    show = sub.add_parser("plan", help="print what each function's package holds")
    show.add_argument("function", nargs="*")
    size = sub.add_parser("sizes", help="sizes of the built packages (JSON)")
    size.add_argument("build_dir", type=Path, nargs="?", default=ROOT / ".aws-sam" / "build")
    check = sub.add_parser("smoke", help="import each built handler with only its package")
    check.add_argument("build_dir", type=Path, nargs="?", default=ROOT / ".aws-sam" / "build")
    args = parser.parse_args(argv)
    try:
        if args.command == "package":
            done = package(args.function, args.out, args.source.resolve())
            print(
                f"{done.function}: {len(done.modules)} modules, "
                f"{', '.join(done.distributions) or 'no distributions'}"
            )
        elif args.command == "find-python":
            print(find_python(runtime()[0]))
        elif args.command == "plan":
            for function in args.function or sorted(function_handlers()):
                the_plan = plan(function)
                print(
                    f"{function}: {the_plan.handler}, {len(the_plan.modules)} modules, "
                    f"{' '.join(the_plan.distributions) or 'no distributions'}"
                )
        elif args.command == "smoke":
            if smoke(args.build_dir.resolve(), find_python(runtime()[0])):
                return 1
        else:
            for row in sizes(args.build_dir):
                print(json.dumps(row))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
