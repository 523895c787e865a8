"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real
``aetrain serve``: embedded API, SQLite, file-system broker and a worker process that trains.

The tests share one server and run in order: sign in and generate a dataset; see the API's
validation beside a field, start a comparison and watch a job's loss curve arrive as it trains;
cancel a queued job; read the finished comparison; then look as another tenant. Each page is
saved as a PNG under the session's temporary folder (``dashboard-screenshots*/``; pytest
prints where) so a failure can be looked at.
"""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.client import Client, embedded_server
from api.core.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium); with CI set this fails instead",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402

# The machine may be busy (training runs beside the browser): wait up to 30 s for a page.
expect.set_options(timeout=30_000)

# The pictures of docs/dashboard.md.
TOUR = {"jobs", "job-running", "comparison", "submit-error", "dataset", "model"}
DOCS = os.environ.get("AETRAIN_DASHBOARD_DOCS")
# The comparison the tests start: tiny, or for the tour long enough to learn something (the
# quickstart's recipe at 300 iterations; a few minutes).
TRAIN_IMAGES, TRAIN = (
    ("120", {"max_batches": "300", "batch": "8", "width": "128", "eval_interval": "50"})
    if DOCS
    else ("24", {"max_batches": "40", "batch": "4", "width": "64", "eval_interval": "0"})
)
MODEL = "yolov3-tiny-small-tuned" if DOCS else "yolov3-tiny-small"
# Milliseconds to wait for a comparison's training.
TRAINED_MS = 900_000 if DOCS else 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    """The embedded server and its log (which holds the sign-in link it printed)."""
    home = tmp_path_factory.mktemp("dashboard-home")
    log = home / "serve.log"
    with embedded_server(Settings(home=home), log) as client:
        yield client, log


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"CI is set but there is no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the pages are saved; ``AETRAIN_DASHBOARD_DOCS=DIR`` saves the tour's pictures
    of docs/dashboard.md there instead (the window only, small palette PNGs)."""
    return Path(DOCS) if DOCS else tmp_path_factory.mktemp("dashboard-screenshots")


@pytest.fixture(scope="module")
def made() -> dict[str, int]:
    """What one test made through the page for the next ones (the comparison's id)."""
    return {}


@pytest.fixture(scope="module")
def page(browser: Browser, server: tuple[Client, Path]) -> Iterator[Page]:
    """One tab of the first tenant (the local key), kept across the tests in order."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


@pytest.fixture(autouse=True)
def _shoot_a_failure(request: pytest.FixtureRequest, shots: Path) -> Iterator[None]:
    """A failed test leaves the first tenant's page as ``FAILED-<test>.png``."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "page" in request.fixturenames:
        _shoot(request.getfixturevalue("page"), shots, f"FAILED-{request.node.name}")


def _shoot(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    if not DOCS:
        page.screenshot(path=str(path), full_page=True)
        return
    if name not in TOUR:
        return
    from PIL import Image

    page.wait_for_timeout(500)  # charts drawn
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)


def _sign_in_link(log: Path) -> str:
    found = re.search(r"dashboard \(signs in with the local key\): (\S+)", log.read_text())
    assert found, f"aetrain serve printed no sign-in link; see {log}"
    return found.group(1)


def test_sign_in_link_then_generate_a_dataset_and_read_its_report(
    page: Page, server: tuple[Client, Path], shots: Path
) -> None:
    client, log = server
    link = _sign_in_link(log)
    assert link.startswith(f"{client.base_url}/#key=")
    page.goto(link)
    expect(page.locator("#jobs")).to_be_visible()
    # The key left the address bar for this tab's storage, and never reached the server.
    assert "key=" not in page.url
    key = link.split("#key=")[1]
    assert page.evaluate("sessionStorage.getItem('aetrain.apiKey')") == key
    assert key not in log.read_text().replace(link, "")
    _shoot(page, shots, "signed-in")

    page.click("nav >> text=Datasets")
    page.fill("#generate-form [name=train]", TRAIN_IMAGES)
    page.fill("#generate-form [name=val]", "30" if DOCS else "8")
    page.fill("#generate-form [name=size]", "128")
    page.fill("#generate-form [name=name]", "browser-shapes")
    page.click("#generate-form button[type=submit]")
    counts = page.locator("#report-counts")
    expect(counts).to_contain_text("train")
    expect(counts.locator("tr", has_text="train")).to_contain_text(TRAIN_IMAGES)
    expect(page.locator("h1")).to_contain_text("browser-shapes")
    _shoot(page, shots, "dataset")

    page.click("nav >> text=Models")
    page.get_by_role("link", name="yolov3-tiny-small", exact=True).click()
    expect(page.locator("#layer-table tr.eligible").first).to_be_visible()
    expect(page.locator("#layer-table tr.head-layer").first).to_contain_text("yolo")
    _shoot(page, shots, "model")


def test_submit_shows_the_api_error_beside_the_field_then_the_loss_curve_arrives_live(
    page: Page, server: tuple[Client, Path], shots: Path, made: dict[str, int]
) -> None:
    page.click("nav >> text=Submit")
    expect(page.locator("#layer-table tr.eligible").first).to_be_visible()
    page.fill("[name='train.max_batches']", "0")
    page.click("#submit-form button[type=submit]")
    error = page.locator("[data-error-for='train.max_batches']")
    expect(error).to_have_text(re.compile("greater than or equal to 1"))
    _shoot(page, shots, "submit-error")

    # A comparison of 2 arms x 2 seeds, tiny but long enough to be watched while it trains.
    page.check("[name=kind][value=comparison]")
    expect(page.locator("h1")).to_have_text("Start a comparison")
    dataset = page.locator("[name=dataset_id] option", has_text="browser-shapes")
    page.select_option("[name=dataset_id]", dataset.get_attribute("value"))
    page.select_option("[name=model]", MODEL)
    for name, value in TRAIN.items():
        page.fill(f"[name='train.{name}']", value)
    page.fill("[name=seeds]", "0,1")
    page.select_option("[name='train.anchors']", "fit")  # choices read from the OpenAPI schema
    expect(page.locator("[name='ae.layers']")).to_have_value("stride:16")
    _shoot(page, shots, "submit")
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#arms-by-seeds a")).to_have_count(4)
    made["comparison"] = int(page.url.rsplit("/", 1)[1])
    _shoot(page, shots, "comparison-running")

    # The AE arm's first job, as it trains.
    page.locator("#arms-by-seeds tbody tr", has_text="ae-stride16").locator("a").first.click()
    state, loss = page.locator("#job-state"), page.locator("[data-chart=loss]")
    first = _points_while_running(state, loss)
    assert first, "the loss chart got no point while the job was running"
    if DOCS:  # the tour shows the run half-way
        _points_while_running(state, loss, at_least=4 * 150, timeout=600)
    _shoot(page, shots, "job-running")
    # The stream also tells the page when the job ends, and every row has arrived by then.
    expect(state).to_have_text("succeeded", timeout=TRAINED_MS)
    job_id = int(page.url.rsplit("/", 1)[1])
    job = server[0].get(f"/v1/jobs/{job_id}")
    assert job["spec"]["train"]["anchors"] == "fit" and job["resolved"]["anchors_fitted"]
    keys = "loss,loss_box,loss_obj,loss_cls"
    stored = server[0].get(f"/v1/jobs/{job_id}/metrics", params={"keys": keys, "limit": 10_000})
    assert stored["next_since_step"] is None  # one page holds them all
    expect(loss).to_have_attribute("data-points", str(len(stored["data"])))


def _points_while_running(
    state: Locator, chart: Locator, at_least: int = 1, timeout: float = 120
) -> int:
    """The chart's first point count of ``at_least`` seen while the page says the job runs
    (0: none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text, count = state.inner_text(), int(chart.get_attribute("data-points") or 0)
        if text == "running" and count >= at_least:
            return count
        if text in ("succeeded", "failed", "cancelled"):
            return 0
        time.sleep(0.2)
    return 0


def test_cancel_a_queued_job_from_its_page(
    page: Page, server: tuple[Client, Path], shots: Path, made: dict[str, int]
) -> None:
    client, _ = server
    # Behind the comparison's jobs in the queue, so it is still queued when cancelled.
    comparison = client.get(f"/v1/comparisons/{made['comparison']}")
    body = {**comparison["spec"]["base"], "name": "to cancel"}
    job = client.post("/v1/jobs", body)
    page.goto(f"{client.base_url}/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("queued")
    page.click("#cancel")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.locator("#event-log")).to_contain_text("cancel")
    _shoot(page, shots, "job-cancelled")
    page.goto(f"{client.base_url}/#/jobs?state=cancelled")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    expect(page.locator("#jobs tbody tr")).to_contain_text("to cancel")


def test_a_finished_comparison_shows_its_verdict_table_and_differences(
    page: Page, server: tuple[Client, Path], shots: Path, made: dict[str, int]
) -> None:
    client, _ = server
    comparison = {"id": made["comparison"]}
    page.goto(f"{client.base_url}/#/comparisons/{comparison['id']}")
    verdict = page.locator("#verdicts .verdict")
    expect(page.locator("#comparison-progress")).to_contain_text("4 succeeded", timeout=TRAINED_MS)
    finished = client.get(f"/v1/comparisons/{comparison['id']}")
    assert finished["progress"]["succeeded"] == 4, finished["jobs"]
    (expected,) = finished["summary"]["verdicts"].values()
    expect(verdict).to_have_text(expected)
    assert "ae-stride16" in expected and "95% CI" in expected
    expect(page.locator("#arms-by-seeds tbody tr")).to_have_count(2)
    expect(page.locator("#arms-by-seeds a")).to_have_count(4)
    differences = [
        d for m in finished["summary"]["metrics"].values() for d in m["differences"].values()
    ]
    rows = sum(d["mean"] is not None for d in differences)
    expect(page.locator("#forest svg g")).to_have_count(rows)
    expect(page.locator("[data-chart='curves-loss'] .uplot")).to_be_visible()
    _shoot(page, shots, "comparison")

    # A finished job of it: curves from the metrics pages, and its checkpoint as a file.
    page.locator("#arms-by-seeds a").first.click()
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator("[data-chart=loss] .uplot")).to_be_visible()
    job_id = int(page.url.rsplit("/", 1)[1])
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints")["data"]
    (last,) = (c for c in checkpoints if c["name"] == "last")
    with page.expect_download() as download:
        page.click("[data-download='last.weights']")
    saved = Path(download.value.path())
    assert download.value.suggested_filename == f"job{job_id}-last.weights"
    assert saved.stat().st_size == last["formats"]["weights"]["size"]
    _shoot(page, shots, "job-finished")
    page.click("nav >> text=Jobs")
    expect(page.locator("#jobs tbody tr")).to_have_count(5)
    _shoot(page, shots, "jobs")


def test_another_tenant_sees_none_of_it(
    browser: Browser, server: tuple[Client, Path], shots: Path, made: dict[str, int]
) -> None:
    client, _ = server
    comparison = {"id": made["comparison"]}
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    other = context.new_page()
    try:
        other.goto(client.base_url)
        other.fill("[name=api_key]", "aet_not-a-key")
        other.click("button[type=submit]")
        expect(other.locator(".form-error")).to_contain_text("refused")
        other.fill("[name=api_key]", _new_tenant_key(server))
        other.click("button[type=submit]")
        expect(other.locator("#jobs")).to_contain_text("No jobs yet")
        _shoot(other, shots, "other-tenant-jobs")
        other.goto(f"{client.base_url}/#/comparisons/{comparison['id']}")
        expect(other.locator(".error")).to_contain_text(f"comparison {comparison['id']} not found")
        other.goto(f"{client.base_url}/#/datasets")
        expect(other.locator("#datasets")).to_contain_text("No datasets yet")
        other.goto(f"{client.base_url}/#/comparisons")
        expect(other.locator("#comparisons")).to_contain_text("No comparisons yet")
    finally:
        context.close()


def _new_tenant_key(server: tuple[Client, Path]) -> str:
    from api.auth import create_tenant_with_key
    from api.core.db import make_engine, make_session_factory

    _, log = server
    engine = make_engine(f"sqlite:///{log.parent / 'aetrain.db'}")
    try:
        with make_session_factory(engine)() as session:
            return create_tenant_with_key(session, "mallory").key
    finally:
        engine.dispose()
