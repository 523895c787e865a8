"""The interactive documentation works offline: its pages load nothing from outside the server."""

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from api.main import create_app


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server(page: str, tmp_path: Path) -> None:
    # No lifespan: the pages and their assets need neither the database nor the broker.
    client = TestClient(create_app(Settings(home=tmp_path)))
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert not re.search(r"https?://", html.text), html.text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assets = [url for url in urls if url.startswith("/docs-assets/")]
    assert any(url.endswith(".js") for url in assets), html.text
    for url in [*urls, "/openapi.json"]:
        assert client.get(url).status_code == 200, url
