"""The one resolver of model references, on PostgreSQL and SQLite."""

import pytest
from sqlalchemy import select

from ae_model.cfg import bundled_cfg_path, list_bundled_cfgs, parse_cfg
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import ModelConfig
from api.core.model_refs import ModelNotFoundError, bundled_model, resolve_model
from api.migrate import upgrade

CFG = bundled_cfg_path("yolov3-tiny-small").read_text()


def test_references_resolve_for_their_tenant_only(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            alice, mallory = Tenant(name="alice"), Tenant(name="mallory")
            session.add_all([alice, mallory])
            session.flush()
            upload = ModelConfig(tenant_id=alice.id, name="mine", cfg_text=CFG)
            session.add(upload)
            session.commit()

            for name in ("yolov3-tiny", "yolov3-tiny.cfg"):
                bundled = resolve_model(session, mallory.id, name)
                assert (bundled.name, bundled.ref, bundled.source) == (
                    "yolov3-tiny", "yolov3-tiny", "yolov3-tiny.cfg"
                )  # fmt: skip
                assert bundled.upload is None
                assert bundled.text == bundled_cfg_path("yolov3-tiny").read_text()
            # An upload by its id, or by the id's digits as GET /v1/models lists it.
            for by_id in (upload.id, str(upload.id)):
                mine = resolve_model(session, alice.id, by_id)
                assert (mine.name, mine.text, mine.ref) == ("mine", CFG, str(upload.id))
                assert mine.parse().source == "mine.cfg"
            assert session.scalars(select(ModelConfig.id)).all() == [upload.id]

            with pytest.raises(ModelNotFoundError, match="no bundled cfg named 'yolov9'"):
                resolve_model(session, alice.id, "yolov9")
            with pytest.raises(ModelNotFoundError) as listed:
                resolve_model(session, alice.id, "²")  # a digit to str.isdigit, not an id
            assert all(name in str(listed.value) for name in list_bundled_cfgs())
            # Another tenant's upload does not exist for mallory; nor do ids out of range.
            for missing in (upload.id, 0, 2**63, str(2**63)):
                tenant = mallory.id if missing == upload.id else alice.id
                with pytest.raises(ModelNotFoundError, match=f"no uploaded model {missing}; see"):
                    resolve_model(session, tenant, missing)
    finally:
        engine.dispose()


def test_a_bundled_cfg_is_read_and_parsed_once_per_process() -> None:
    first, again = bundled_model("yolov3-tiny"), bundled_model("yolov3-tiny.cfg")
    assert again is first and first.parse() is again.parse()
    assert first.parse() == parse_cfg(first.text, first.source)
