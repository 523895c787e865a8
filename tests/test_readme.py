"""README.md's shell blocks run as written, in order, in one shell, on a fresh machine: every
```bash block, as a reader pastes them, in a copy of the repository (the files git tracks or
would track) with HOME and AETRAIN_HOME (``~/.aetrain``) in fresh temporary folders. A block
that fails fails this test with its text and its output.

What is substituted, and why:

- ``python3.11`` on PATH is a shim. ``python3.11 -m venv DIR`` makes a real venv (with pip) from
  this test's interpreter and adds a ``.pth`` file to it, so the new venv sees this test's
  site-packages: ``pip install -e .`` then finds PyTorch and every other dependency installed
  and installs nothing but the project (a real install would download PyTorch again). pip runs
  with ``PIP_NO_INDEX`` (nothing downloaded) and without build isolation: the build backend is
  this test's setuptools (the shim removes the older one venv bundles, which a real install's
  isolated build would not use either). The install, the ``aetrain`` script it makes and
  everything run with it are real.
- Port 8000 becomes a free port, so the test runs beside anything listening on 8000.
- A block preceded by ``<!-- test_readme: skip (REASON) -->`` is not run: only the block that
  runs the whole test suite may be skipped (it is what CI runs, and it holds this test).
  ``<!-- test_readme: slow (...) -->`` counts 20 minutes instead of 5 in the script's time
  limit (the quickstart); it still runs, once.

After the blocks have run, what the README says they print and write is checked.
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ae_model.weights import WeightsHeader
from api.client import free_port
from tests.conftest import REPO_ROOT

BLOCK = re.compile(r"(?:<!-- test_readme: (skip|slow) \((.+?)\) -->\n)?```bash\n(.*?)```", re.S)
SECONDS = {"slow": 1200, None: 300}
SHIM = """#!{python}
# python3.11 for tests/test_readme.py: `-m venv DIR` also links DIR to the test's packages.
import os, subprocess, sys, sysconfig
args = sys.argv[1:]
if args[:2] != ["-m", "venv"]:
    os.execv(sys.executable, [sys.executable, *args])
subprocess.run([sys.executable, *args], check=True)
venv = args[-1]
# The setuptools that venv bundles is too old to build the project; the test's builds it.
pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"]
subprocess.run(pip, check=True)
packages = sysconfig.get_path("purelib", vars={{"base": venv, "platbase": venv}})
with open(os.path.join(packages, "test_readme.pth"), "w") as f:
    f.write(sysconfig.get_path("purelib") + "\\n")
"""


@dataclass(frozen=True)
class Block:
    index: int
    text: str
    mark: str | None  # "skip", "slow" or None
    reason: str


def _blocks() -> list[Block]:
    readme = (REPO_ROOT / "README.md").read_text()
    return [
        Block(i, m.group(3), m.group(1), m.group(2) or "")
        for i, m in enumerate(BLOCK.finditer(readme))
    ]


def _copy_of_repository(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())


def _environment(home: Path, shims: Path) -> dict[str, str]:
    # Nothing of this machine's configuration: the embedded default, as on a fresh machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETRAIN_", "PIP_"))}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    shims.mkdir()
    shim = shims / "python3.11"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    return {
        **env, "HOME": str(home), "AETRAIN_HOME": str(home / ".aetrain"),
        "PATH": f"{shims}{os.pathsep}{env['PATH']}", "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }  # fmt: skip


def _script(blocks: list[Block], port: int) -> str:
    """One bash script: each block after a marker line, stopping at the first failure."""
    parts = ["set -eo pipefail\n"]
    for block in blocks:
        if block.mark != "skip":
            parts.append(f"echo '::block {block.index}'\n{block.text.replace('8000', str(port))}")
    return "".join(parts)


def _run(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Exit status and output; every process the script started is gone when it returns."""
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = -1
    _end_group(proc.pid)
    return status, output


def _end_group(group: int, grace_s: float = 60) -> None:
    """The server a block left running stops its worker on SIGTERM; give it time, then kill."""
    deadline = time.monotonic() + grace_s
    for stop in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, stop)
            while time.monotonic() < deadline:
                time.sleep(0.5)
                os.killpg(group, 0)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10


def _outputs(output: str) -> dict[int, str]:
    """Each block's output, by block index, from the script's marker lines."""
    pieces = re.split(r"^::block (\d+)\n", output, flags=re.M)
    return {int(index): text for index, text in zip(pieces[1::2], pieces[2::2], strict=True)}


def _quickstart(out: str, cwd: Path, home: Path) -> None:
    # The README: the paired comparison with 95% CIs and p-values, plot and numbers written.
    for words in (
        "AP50",
        "95% CI",
        "paired t-test p",
        "vs baseline",
        "seed noise",
        "per seed, AP / AP50",
        "quickstart took",
    ):
        assert words in out, f"the quickstart did not print {words!r}"
    written = {p.suffix for p in (cwd / "aetrain-quickstart").glob("comparison-*")}
    assert {".png", ".json"} <= written, written


def _server(out: str, cwd: Path, home: Path) -> None:
    assert (home / ".aetrain" / "api_key").is_file()


def _job(out: str, cwd: Path, home: Path) -> None:
    assert '"key":"val/AP"' in out, "no validation AP printed"
    weights = (cwd / "last.weights").read_bytes()
    header = WeightsHeader.from_bytes(weights[: WeightsHeader().nbytes])
    assert header.seen > 0 and len(weights) > 1_000_000, "last.weights is not darknet weights"


def _comparison(out: str, cwd: Path, home: Path) -> None:
    assert "95% CI" in out and "ae16" in out, "no comparison table printed"
    assert (cwd / "comparison.png").read_bytes()[:4] == b"\x89PNG"


# What each block prints and writes, found by a command the block runs.
CHECKS: dict[str, Callable[[str, Path, Path], None]] = {
    "aetrain quickstart": _quickstart,
    "aetrain serve": _server,
    "checkpoints/last?format=weights": _job,
    "/plot.png": _comparison,
}


def test_only_the_test_suite_block_is_skipped_and_each_check_finds_its_block() -> None:
    blocks = _blocks()
    assert [b.index for b in blocks if b.mark == "skip"] == [
        b.index for b in blocks if "-m pytest" in b.text
    ], "only the block running the whole test suite may be marked skip"
    for command in CHECKS:
        assert [b for b in blocks if command in b.text], f"no README block runs {command!r}"


@pytest.mark.timeout(sum(SECONDS[b.mark] for b in _blocks() if b.mark != "skip") + 120)
def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    blocks, cwd, home = _blocks(), tmp_path / "aetrain", tmp_path / "home"
    _copy_of_repository(cwd)
    home.mkdir()
    env = _environment(home, tmp_path / "shims")
    timeout = sum(SECONDS[b.mark] for b in blocks if b.mark != "skip")
    status, output = _run(_script(blocks, free_port()), cwd, env, timeout)
    outputs = _outputs(output)
    if status != 0:
        failed = blocks[max(outputs)] if outputs else blocks[0]
        log = cwd / "aetrain-serve.log"
        server = f"\n--- {log.name} (end):\n{log.read_text()[-3000:]}" if log.exists() else ""
        pytest.fail(
            f"README block {failed.index} failed (exit {status}; -1: past {timeout} s):\n"
            f"{failed.text}\n--- its output:\n{outputs.get(failed.index, output)}{server}"
        )
    for block in blocks:
        for command, check in CHECKS.items():
            if command in block.text:
                check(outputs[block.index], cwd, home)
