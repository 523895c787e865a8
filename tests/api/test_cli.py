"""The service commands: `aetrain serve` embedded (API + worker process) and `aetrain keys`."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from api.client import free_port, wait_until_serving

AETRAIN = str(Path(sys.executable).parent / "aetrain")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETRAIN_", "DATABASE_URL"))}
    env.pop("CELERY_BROKER_URL", None)
    return {**env, "AETRAIN_HOME": str(home)}


def _processes_with_home(home: Path) -> list[int]:
    """Pids of live processes whose environment has AETRAIN_HOME=home (server and workers)."""
    needle = f"AETRAIN_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0"):
                status = (proc / "status").read_text()
                if "zombie" not in status:
                    found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_serve_embedded_migrates_creates_a_key_and_runs_a_worker(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [AETRAIN, "serve", "--port", str(port)], env=_env(home), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, proc, tmp_path / "serve.log", 60)
        key = (home / "api_key").read_text().strip()
        assert oct((home / "api_key").stat().st_mode)[-3:] == "600"
        jobs = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert jobs.status_code == 200 and jobs.json()["count"] == 0
        assert httpx.get(f"{base}/v1/jobs").status_code == 401
        # The embedded worker is a child process consuming the file-system broker.
        children = subprocess.run(
            ["pgrep", "-f", "-P", str(proc.pid), "celery"], capture_output=True, text=True
        ).stdout.split()
        assert children, "no embedded worker process"
        assert {proc.pid, *map(int, children)} <= set(_processes_with_home(home))
        # It trains two jobs at once (AETRAIN_EMBEDDED_JOBS), sharing the cores between them.
        worker = Path(f"/proc/{children[0]}")
        assert b"--concurrency=2" in (worker / "cmdline").read_bytes().split(b"\0")
        threads = max(1, len(os.sched_getaffinity(0)) // 2)
        assert f"AETRAIN_WORKER_THREADS={threads}".encode() in (
            (worker / "environ").read_bytes().split(b"\0")
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    assert _processes_with_home(home) == []


def test_keys_create_needs_a_migrated_database_then_prints_a_working_key(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    refused = subprocess.run(
        [AETRAIN, "keys", "create", "team"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "aetrain db upgrade" in refused.stderr
    subprocess.run([AETRAIN, "db", "upgrade"], env=env, check=True, capture_output=True)
    created = subprocess.run(
        [AETRAIN, "keys", "create", "team"], env=env, capture_output=True, text=True, check=True
    )
    key = created.stdout.strip()
    assert key.startswith("aet_") and len(key) > 40

    from api.auth import tenant_for_key
    from api.core.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'aetrain.db'}")
    with make_session_factory(engine)() as session:
        assert tenant_for_key(session, key) is not None
        assert tenant_for_key(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    engine.dispose()


def test_quickstart_runs_a_comparison_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [AETRAIN, "quickstart", "--seeds", "2", "--max-batches", "8", "--out", str(out)],
        env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 arms x 2 seeds = 4 jobs" in done.stdout
    assert "quickstart took" in done.stdout and "minutes" in done.stdout
    # The verdict names both arms and the paired difference's confidence interval.
    assert "ae-stride16" in done.stdout and "95% CI" in done.stdout, done.stdout
    (state_file,) = out.glob("comparison-*.json")
    state = json.loads(state_file.read_text())
    assert state["progress"]["succeeded"] == 4, state["notes"]
    assert {(j["arm"], j["seed"]) for j in state["jobs"]} == {
        (arm, seed) for arm in ("baseline", "ae-stride16") for seed in (0, 1)
    }
    assert (out / state_file.name.replace(".json", ".png")).read_bytes()[:4] == b"\x89PNG"
    # The embedded server and worker are gone when the command returns.
    assert _processes_with_home(tmp_path / "home") == []


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    subprocess.run([AETRAIN, "db", "upgrade"], env=env, check=True, capture_output=True)

    def aetrain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AETRAIN, "keys", *args], env=env, capture_output=True, text=True)

    first, second = (aetrain("create", "team").stdout.strip() for _ in range(2))
    listed = aetrain("list", "--tenant", "team").stdout.splitlines()
    assert [line.split("\t")[2] for line in listed] == [first[:12] + "...", second[:12] + "..."]
    assert all(line.endswith("active") for line in listed)

    ambiguous = aetrain("revoke", "aet_")
    assert ambiguous.returncode == 1 and "2 keys match" in ambiguous.stderr
    revoked = aetrain("revoke", first[:12])
    assert revoked.returncode == 0 and "of tenant team" in revoked.stdout, revoked.stderr
    assert "AETRAIN_KEY_CACHE_S" in revoked.stdout
    assert aetrain("revoke", first[:12]).returncode == 0  # again: it stays revoked
    assert aetrain("revoke", "999").returncode == 1

    from api.auth import tenant_for_key
    from api.core.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'aetrain.db'}")
    with make_session_factory(engine)() as session:
        assert tenant_for_key(session, first) is None
        assert tenant_for_key(session, second) is not None
    engine.dispose()
    listed = aetrain("list").stdout.splitlines()
    assert "revoked" in listed[0] and listed[1].endswith("active")


def test_a_terminated_embedded_client_stops_its_server_and_worker(tmp_path: Path) -> None:
    # `aetrain quickstart` or bench/replicate_digits.py killed with SIGTERM (not Ctrl-C): the
    # server and worker it started stop too, instead of training on with nobody to ask.
    home = tmp_path / "home"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from api.client import embedded_server\n"
        "from api.core.settings import Settings\n"
        "home = Path(sys.argv[1])\n"
        "with embedded_server(Settings(home=home), home / 'server.log') as client:\n"
        "    print('serving', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(home)], env=_env(home), stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        assert len(_processes_with_home(home)) >= 3  # this client, the server, its worker
        proc.terminate()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        remaining = _processes_with_home(home)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server shares the client's group
            os.killpg(proc.pid, signal.SIGKILL)
    assert remaining == []
