"""The installable layout: every package imports, and the API side stays free of torch."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("name", ["ae_model", "api", "worker", "migrations"])
def test_package_imports(name: str) -> None:
    assert importlib.import_module(name).__name__ == name


def test_api_and_worker_parent_do_not_import_torch() -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import sys\n"
        "import api.main, api.cli, worker.celery_app, worker.tasks\n"
        "loaded = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "assert not loaded, f'imported {loaded}'\n"
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
