"""The reference log-prob cache: content-addressed keys, atomic safetensors files, misses on wrong lengths."""

import torch

from rlhfkit.engine import refcache


def test_hash_follows_content_not_name(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "w.bin").write_bytes(b"one")
    h1 = refcache.hash_path(str(a))
    (a / "w.bin").write_bytes(b"two")
    assert refcache.hash_path(str(a)) != h1
    assert refcache.hash_path("org/model") == refcache.hash_path("org/model")  # hub ids hash as themselves


def test_round_trip_and_misses(tmp_path):
    key = refcache.cache_key({"model": "m", "data": "d", "max_length": 256})
    assert key != refcache.cache_key({"model": "m", "data": "d", "max_length": 128})
    t = {"chosen": torch.arange(4.0), "rejected": -torch.arange(4.0)}
    refcache.save(tmp_path, key, t, {"note": "test"})
    got = refcache.load(tmp_path, key, 4)
    assert torch.equal(got["chosen"], t["chosen"]) and torch.equal(got["rejected"], t["rejected"])
    assert refcache.load(tmp_path, key, 5) is None  # wrong number of rows: a stale cache is ignored
    assert refcache.load(tmp_path, "missing", 4) is None
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left behind
