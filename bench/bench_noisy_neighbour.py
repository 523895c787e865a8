"""Noisy neighbour: one tenant's light requests while another hammers the heavy endpoints.

A real ``aetrain serve`` (one uvicorn process, no worker) on a fresh database, loopback only.
Tenant B runs a closed loop of ``GET /v1/jobs?limit=1``, first alone for ``--alone-s``
seconds, then for ``--load-s`` seconds while tenant A runs ``--loops`` concurrent loops, each
cycling through the heavy requests: generate a small dataset, upload a large cfg (yolov3),
list its models (large cfgs). A refused request (429) is retried after ``--retry-pause-s``,
not after its ``Retry-After``, so A keeps pressing. Each loop stops at ``--max-requests``.
Prints B's latency p50/p99/max alone and under load, and A's answers by status.

    python bench/bench_noisy_neighbour.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test

With a PostgreSQL URL the bench creates and drops a database of its own next to the one named.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

# bench/ is on sys.path when a script here runs.
from bench_api_load import database, percentile, server

from ae_model.cfg import bundled_cfg_path
from api.auth import create_tenant_with_key
from api.core.db import make_engine, make_session_factory

LARGE_CFG = bundled_cfg_path("yolov3").read_text()
GENERATE = {"kind": "digits", "train": 16, "val": 4, "size": 128, "seed": 0}


def keys(url: str) -> tuple[str, str]:
    """API keys of two new tenants, A (noisy) and B (quiet)."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            a, b = (create_tenant_with_key(session, tenant).key for tenant in ("a", "b"))
            return a, b
    finally:
        engine.dispose()


async def quiet(base: str, key: str, seconds: float, cap: int) -> list[float]:
    """B's closed loop: latencies (s) of ``GET /v1/jobs?limit=1`` for ``seconds``."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(latencies) < cap:
            started = time.monotonic()
            response = await client.get("/v1/jobs", params={"limit": 1})
            assert response.status_code == 200, response.text[:200]
            latencies.append(time.monotonic() - started)
    return latencies


async def noisy(base: str, key: str, seconds: float, args: argparse.Namespace) -> Counter[str]:
    """One of A's loops: heavy requests for ``seconds``; answers counted by kind and status."""
    answers: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {key}"}
    requests = (
        ("generate", "POST", "/v1/datasets/generate", {"json": GENERATE}),
        ("upload cfg", "POST", "/v1/models", {"json": {"name": "big", "cfg": LARGE_CFG}}),
        ("list models", "GET", "/v1/models", {"params": {"limit": 100}}),
    )
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end and sent < args.max_requests:
            kind, method, path, kwargs = requests[sent % len(requests)]
            response = await client.request(method, path, **kwargs)
            sent += 1
            answers[f"{kind} {response.status_code}"] += 1
            if response.status_code == 429:
                await asyncio.sleep(args.retry_pause_s)
    return answers


async def measure(base: str, a_key: str, b_key: str, args: argparse.Namespace) -> None:
    alone = await quiet(base, b_key, args.alone_s, args.max_requests)

    async def hammer() -> Counter[str]:
        loops = [noisy(base, a_key, args.load_s, args) for _ in range(args.loops)]
        return sum(await asyncio.gather(*loops), Counter())

    loaded, answers = await asyncio.gather(
        quiet(base, b_key, args.load_s, args.max_requests), hammer()
    )
    for label, values in (("B alone", alone), ("B while A hammers", loaded)):
        print(
            f"{label:<20} n={len(values):>5}  p50 {statistics.median(values) * 1e3:7.1f} ms  "
            f"p99 {percentile(values, 99) * 1e3:7.1f} ms  max {max(values) * 1e3:7.1f} ms"
        )
    print(f"A's answers over {args.load_s:g} s with {args.loops} loops:")
    for answer, count in sorted(answers.items()):
        print(f"  {answer:<20} {count:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--loops", type=int, default=4, help="tenant A's concurrent loops")
    parser.add_argument("--alone-s", type=float, default=5.0)
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=5000, help="per loop")
    parser.add_argument("--retry-pause-s", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with database(args.database, home) as url:
            a_key, b_key = keys(url)
            with server(url, home, workers=1, live_page_s=0.0) as (base, _pid):
                asyncio.run(measure(base, a_key, b_key, args))


if __name__ == "__main__":
    main()
