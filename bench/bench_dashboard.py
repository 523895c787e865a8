"""How fast the dashboard's job page draws a long job: a finished job of N iterations with 6
metric keys each is written straight into an embedded server's database, then Debian's
Chromium (through Playwright) opens its page twice and times until every loss point is drawn.

    python bench/bench_dashboard.py [--iterations 100000] [--home DIR]

Needs /usr/bin/chromium (apt-get install chromium) and the dev extras (playwright).
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from sqlalchemy import insert, select

from api.client import embedded_server
from api.core.db import make_engine, make_session_factory
from api.core.db.models import Job, JobState, Metric, Tenant
from api.core.settings import Settings

KEYS = ["loss", "loss_box", "loss_obj", "loss_cls", "lr", "ae_alpha"]
LOSS_SERIES = 4  # the loss chart draws loss and its three parts


def add_long_job(home: Path, iterations: int) -> int:
    """A succeeded job of ``iterations`` with a row per key and iteration; its id."""
    engine = make_engine(f"sqlite:///{home / 'aetrain.db'}")
    with make_session_factory(engine)() as session:
        tenant = session.scalars(select(Tenant.id)).one()
        job = Job(
            tenant_id=tenant, spec={"model": "yolov3-tiny-small", "dataset_id": 1},
            state=JobState.succeeded, max_batches=iterations, iteration=iterations,
        )  # fmt: skip
        session.add(job)
        session.flush()
        rng = random.Random(0)
        rows = [
            {"job_id": job.id, "key": key, "step": step, "value": 10 / (1 + step / 1000) + noise}
            for step in range(1, iterations + 1)
            for key, noise in zip(KEYS, (rng.random() for _ in KEYS), strict=True)
        ]
        session.execute(insert(Metric), rows)
        session.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def main() -> None:
    parser = argparse.ArgumentParser(description="dashboard job page on a long job")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--home", type=Path, default=None, help="default: a new temp folder")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp())
    points = LOSS_SERIES * args.iterations
    with embedded_server(Settings(home=home), home / "serve.log") as client:
        job_id = add_long_job(home, args.iterations)
        print(f"{len(KEYS) * args.iterations} metric rows ({args.iterations} iterations x "
              f"{len(KEYS)} keys) in one finished job")  # fmt: skip
        key = (home / "api_key").read_text().strip()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
            )
            # bypass_csp: the page's CSP forbids eval, which Playwright's waits use.
            page = browser.new_page(viewport={"width": 1200, "height": 800}, bypass_csp=True)
            page.goto(f"{client.base_url}/#key={key}")
            page.wait_for_selector("#jobs")
            drawn = (
                f"document.querySelector('[data-chart=loss]')?.dataset.points === '{points}' "
                "&& document.querySelector('[data-chart=loss] .uplot')"
            )
            for attempt in ("first open (server pages uncached)", "second open"):
                start = time.monotonic()
                page.goto(f"{client.base_url}/#/jobs/{job_id}")
                page.wait_for_function(drawn, timeout=300_000)
                print(f"{attempt}: {points} loss points drawn after "
                      f"{time.monotonic() - start:.2f} s")  # fmt: skip
                page.goto(f"{client.base_url}/#/jobs")
            browser.close()


if __name__ == "__main__":
    main()
