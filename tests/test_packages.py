"""The installable layout: every package imports, the packages depend on each other only as
docs/architecture.md says, and the API side stays free of torch and of import side effects."""

import ast
import importlib
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("ae_model", "api", "worker")
TORCH = ("torch", "torchvision")
WEB = ("fastapi", "starlette", "uvicorn")


def _top(name: str) -> str:
    return name.partition(".")[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@cache
def _modules() -> dict[str, Path]:
    """Every module of the three packages by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


class _Imports(ast.NodeVisitor):
    """The modules a module imports; with ``top_level``, only those imported when it loads
    (not inside functions, nor for type checkers only)."""

    def __init__(self, module: str, is_package: bool, top_level: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.top_level = top_level
        self.names: set[str] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if not self.top_level:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if self.top_level and test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for statement in node.orelse:  # the body runs for type checkers only
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.rsplit(".", node.level - 1)[0] if node.level > 1 else self.package
            base = f"{anchor}.{base}" if base else anchor
        self.names.add(base)
        # `from api.core import jobstore` imports the module api.core.jobstore.
        self.names.update(f"{base}.{alias.name}" for alias in node.names)


@cache
def _imports(module: str, top_level: bool = False) -> frozenset[str]:
    path = _modules()[module]
    visitor = _Imports(module, path.name == "__init__.py", top_level)
    visitor.visit(ast.parse(path.read_text(), str(path)))
    known = _modules()
    # An imported name that is no module of ours is a function or class of its module.
    return frozenset(name for name in visitor.names if _top(name) not in PACKAGES or name in known)


@cache
def _loads_torch(module: str) -> bool:
    """Whether importing ``module`` of ae_model loads torch: it, a package above it, or an
    ae_model module either imports at its top level (and so on) imports torch there."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        imports = _imports(name, top_level=True)
        if any(_top(imported) in TORCH for imported in imports):
            return True
        parents = [name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)]
        todo += [other for other in (*imports, *parents) if _within(other, "ae_model")]
    return False


def _violations(module: str) -> list[str]:
    """The imports of ``module`` that break the dependency rule of docs/architecture.md."""
    found = []
    for name in sorted(_imports(module)):
        top = _top(name)
        torch_model = _within(name, "ae_model") and _loads_torch(name)
        if _within(module, "ae_model"):
            bad = top in ("api", "worker")
        elif _within(module, "api.core"):
            outside = top == "api" and not _within(name, "api.core")
            bad = outside or top in (*TORCH, *WEB, "worker") or torch_model
        elif _within(module, "api"):
            bad = top in (*TORCH, "worker") or torch_model
        else:  # worker
            bad = top == "api" and not _within(name, "api.core")
        if bad:
            found.append(f"{module} imports {name}")
    return found


def test_packages_depend_on_each_other_as_designed() -> None:
    """ae_model imports neither api nor worker; api.core imports no other part of api, no
    torch, no web framework, no worker; worker imports ae_model and api.core, no other part
    of api; the rest of api never imports worker or torch. api imports only the ae_model
    modules that load no torch. Imports inside functions count too."""
    violations = [v for module in _modules() for v in _violations(module)]
    assert not violations, "\n".join(violations)


def test_the_dependency_check_sees_every_kind_of_import() -> None:
    # A rule checked on an empty list would pass: the walk must find these.
    assert "api.core.jobstore" in _imports("worker.training")
    assert "worker.training" in _imports("worker.tasks")  # imported in the task's body
    assert "worker.training" not in _imports("worker.tasks", top_level=True)
    assert _loads_torch("ae_model.train") and not _loads_torch("ae_model.cfg")


@pytest.mark.parametrize("name", ["ae_model", "api", "worker", "migrations"])
def test_package_imports(name: str) -> None:
    assert importlib.import_module(name).__name__ == name


def test_imports_load_no_torch_build_no_app_and_make_no_folder(tmp_path: Path) -> None:
    core = sorted(name for name in _modules() if _within(name, "api.core"))
    home = tmp_path / "home"
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import gc, sys\n"
        f"for name in {['api.main', 'api.cli', 'worker.celery_app', 'worker.tasks', *core]}:\n"
        "    __import__(name)\n"
        "loaded = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "assert not loaded, f'imported {loaded}'\n"
        "from celery import Celery\n"
        # type(), not isinstance: isinstance would evaluate Celery's lazy proxies, building
        # the default app it looks for.
        "apps = [o for o in gc.get_objects() if issubclass(type(o), Celery)]\n"
        "assert not apps, f'built {apps}'\n"
    )
    env = {**os.environ, "AETRAIN_HOME": str(home)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True)
    assert not home.exists(), "importing made folders"


def test_training_imports_without_the_service_packages() -> None:
    """The GPU machines run ae_model without the service's packages (no onnx, FastAPI,
    Celery, SQLAlchemy, boto3, redis): training and its CLI must import there."""
    absent = ["onnx", "onnxruntime", "fastapi", "celery", "sqlalchemy", "boto3", "redis"]
    code = (
        "import sys\n"
        f"for name in {absent}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as where it is missing\n"
        "import ae_model.train, ae_model.cli, ae_model.export\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_console_script_lists_commands() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "aetrain"), "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "layers" in result.stdout
    assert "db" in result.stdout
