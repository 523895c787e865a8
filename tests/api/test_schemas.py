"""The API's schemas as the OpenAPI description shows them: one page shape for every list."""

from pathlib import Path
from typing import Any

from api.core.settings import Settings
from api.main import create_app


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


def test_every_list_answers_a_page(tmp_path: Path) -> None:
    """No JSON answer is a bare list: a list is ``{data, count}`` (a metrics page adds where
    the next page starts)."""
    spec = create_app(Settings(home=tmp_path)).openapi()
    pages = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"].get("200", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is None:
                continue
            body = _resolve(spec, schema)
            assert body.get("type") != "array", f"{method.upper()} {path} answers a bare list"
            if "data" in body.get("properties", {}):
                assert {"data", "count"} <= set(body["required"]), path
                pages.append(path)
    assert {"/v1/jobs/{job_id}/log", "/v1/jobs/{job_id}/checkpoints"} <= set(pages)
    assert "/v1/webhooks/deliveries" in pages
    assert len(pages) == 8, pages
