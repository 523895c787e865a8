"""The API's cache of response bodies stays within its size, dropping the least used, and
forgets a body kept for a while once that while is over."""

import time

from api.cache import BodyCache


def test_bodies_past_the_size_drop_the_least_recently_used() -> None:
    cache = BodyCache(max_bytes=10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # now "b" is the least recently used
    cache.put("c", b"cccc")
    assert cache.get("b") is None and cache.get("a") == b"aaaa" and cache.get("c") == b"cccc"
    assert cache.size == 8
    cache.put("a", b"aaaaaa")  # replacing a body counts only the new one
    assert cache.size == 10 and cache.get("c") == b"cccc"
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get("huge") is None and cache.size == 10


def test_a_zero_size_cache_keeps_nothing() -> None:
    cache = BodyCache(max_bytes=0)
    cache.put("a", b"a")
    assert cache.get("a") is None and cache.size == 0


def test_a_body_kept_for_a_while_is_gone_after_it() -> None:
    cache = BodyCache(max_bytes=100)
    cache.put("live", b"page", ttl_s=0.2)
    cache.put("final", b"page")
    assert cache.get("live") == b"page" and cache.size == 8
    time.sleep(0.25)
    assert cache.get("live") is None and cache.get("final") == b"page" and cache.size == 4
