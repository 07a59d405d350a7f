"""Round trips of every value kind, views, and what the tiers record."""

import gc
import threading

import numpy as np
import pytest

import vbus


def test_bytes_and_buffers_come_back_as_bytes(cache):
    cache.put("b", b"hello")
    cache.put("ba", bytearray(b"ba"))
    cache.put("mv", memoryview(b"xmvx")[1:3])
    cache["empty"] = b""
    assert cache.get("b") == b"hello"
    assert cache.get("ba") == b"ba" and type(cache.get("ba")) is bytes
    assert cache.get("mv") == b"mv"
    assert cache["empty"] == b""


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
              "uint16", "uint32", "uint64", "bool"]
)
@pytest.mark.parametrize("shape", [(), (0,), (3, 4), (2, 0, 5), (7,)])
def test_numpy_round_trips_keep_dtype_and_shape(cache, dtype, shape):
    array = (np.arange(int(np.prod(shape)) or 0) % 7).astype(dtype).reshape(shape)
    cache.put("a", array)
    back = cache.get("a")
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert back.flags.writeable


def test_non_contiguous_and_big_endian_arrays_are_stored_as_their_values(cache):
    base = np.arange(24, dtype=">i4").reshape(4, 6)
    view = base[:, ::2]
    cache.put("v", view)
    back = cache.get("v")
    assert np.array_equal(back, view) and back.dtype == np.dtype("<i4")


def test_an_array_is_a_one_tensor_safetensors_file_in_l3(cache, tmp_path):
    from safetensors.numpy import load_file

    array = np.linspace(0, 1, 10, dtype=np.float32)
    cache.put("weights/layer0", array)
    path = tmp_path / "home" / "CACHE" / "L3_DISK" / "weights" / "layer0"
    assert np.array_equal(load_file(str(path))["value"], array)


def test_views_are_read_only_and_outlive_eviction_and_close(tmp_path):
    manager = vbus.CacheManager(home=tmp_path / "h")
    manager.put("a", np.arange(5, dtype=np.int64))
    manager.put("b", b"bytes")
    array = manager.get("a", copy=False)
    raw = manager.get("b", copy=False)
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    with pytest.raises(TypeError):
        raw[0] = 1
    manager.put("a", b"replaced")
    manager.delete("b")
    manager.close()
    del manager
    gc.collect()
    assert list(array) == [0, 1, 2, 3, 4]
    assert bytes(raw) == b"bytes"


def test_a_put_over_a_key_being_read_leaves_the_reader_its_version(cache):
    cache.put("k", b"old" * 1000)
    held = cache.get("k", copy=False)
    cache.put("k", b"new")
    assert bytes(held) == b"old" * 1000
    assert cache.get("k") == b"new"


def test_threads_put_and_get_concurrently(cache):
    errors = []

    def work(worker):
        try:
            for i in range(300):
                key = f"t{worker}/{i % 10}"
                value = bytes([worker, i % 256]) * 2048
                cache.put(key, value)
                assert cache.get(key) == value
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []


def test_dict_protocol_keys_pins_and_stats(cache):
    cache["x"] = b"1"
    cache["ds/y"] = b"2"
    assert "x" in cache and "ds/y" in cache and "nope" not in cache
    assert sorted(cache.keys()) == ["ds/y", "x"]
    assert cache.keys("ds") == ["ds/y"]
    assert len(cache) == 2
    assert cache.pin("x") and cache.unpin("x") and not cache.pin("nope")
    assert cache.prefetch(["x", "ds/y"]) == 2
    cache.flush()
    del cache["x"]
    assert "x" not in cache
    with pytest.raises(KeyError):
        del cache["x"]
    stats = cache.get_stats()
    for name in ("l1_hit_rate", "l2_hit_rate", "l3_hit_rate", "tiers", "moves"):
        assert name in stats
    assert 0.0 <= stats["l2_hit_rate"] <= 100.0


def test_the_origin_documents_example(tmp_path):
    config = {
        "cache_hierarchy": {
            "L1_VRAM": {"enabled": True, "max_size_mb": 64, "eviction_policy": "lru"},
            "L2_RAM": {"enabled": True, "max_size_mb": 64, "eviction_policy": "lru"},
            "L3_DISK": {"enabled": True, "max_size_mb": 256, "eviction_policy": "lru"},
        },
        "bus_config": {"ai_routing_enabled": True},
    }
    from vbus import CacheManager

    weights_tensor = np.ones((16, 16), dtype=np.float32)
    cache = CacheManager(config, home=tmp_path / "VBUS")
    cache.put("model_weights", weights_tensor)
    data = cache.get("model_weights")
    stats = cache.get_stats()
    assert np.array_equal(data, weights_tensor)
    assert f"L1 Hit Rate: {stats['l1_hit_rate']}%"
    cache.close()


def test_torch_round_trips(cache):
    torch = pytest.importorskip("torch")
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        tensor = torch.arange(12).reshape(3, 4).to(dtype)
        cache.put("t", tensor)
        back = cache.get("t")
        assert isinstance(back, torch.Tensor) and back.dtype == dtype
        assert torch.equal(back, tensor)
    cache.put("t", torch.empty(0, 3))
    assert cache.get("t").shape == (0, 3)
