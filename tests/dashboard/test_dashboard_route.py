"""The dashboard's page and files as the API serves them (no browser): everything from this
server, a page that runs only this server's scripts, and nothing else reachable."""

import re
import tomllib
from glob import glob
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from api.main import create_app

STATIC = Path(__file__).parents[2] / "api" / "dashboard" / "static"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    # No lifespan: the page and its files need neither the database nor the broker.
    return TestClient(create_app(Settings(home=tmp_path)))


def test_the_page_loads_every_file_from_this_server_under_a_strict_policy(
    client: TestClient,
) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert {"static/app.js", "static/vendor/uplot/uPlot.iife.min.js"} <= set(assets)
    for asset in assets:
        if not asset.startswith("data:"):
            answer = client.get(f"/{asset}")
            assert answer.status_code == 200, asset
            assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.head("/").status_code == 200


def test_our_files_name_no_other_server() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        # The SVG namespace is a name, not an address the browser loads.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
    assert "MIT License" in (STATIC / "vendor" / "uplot" / "LICENSE").read_text()


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/../main.py", "/static/%2e%2e/__init__.py", "/static/"]
)
def test_only_the_dashboard_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_dashboard_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert all(path.startswith("/v1/") for path in paths), sorted(paths)


def test_every_dashboard_file_is_installed_with_the_package() -> None:
    pyproject = tomllib.loads((STATIC.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api.dashboard"]
    # setuptools expands package-data patterns with glob, from the package's folder.
    installed = {path for p in patterns for path in glob(p, root_dir=STATIC.parent)}
    files = {p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert files - installed == set(), "add these to [tool.setuptools.package-data]"
