"""Bad input: a clear exception, the process alive, nothing changed in the home."""

import os

import numpy as np
import pytest

import vbus


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "nul\0byte", "", "a//b"])
def test_bad_keys_are_refused_by_name(cache, key):
    with pytest.raises(vbus.InvalidKeyError) as info:
        cache.put(key, b"x")
    assert isinstance(info.value, ValueError)
    assert cache.keys() == []


def test_wrong_types_are_refused_with_the_type_named(cache):
    with pytest.raises(TypeError, match="builtins.object"):
        cache.put("k", object())
    with pytest.raises(TypeError, match="complex"):
        cache.put("k", np.zeros(2, dtype=np.complex64))
    with pytest.raises(TypeError):
        cache.put(3, b"x")
    assert cache.keys() == []


def test_a_missing_key(cache):
    assert cache.get("missing") is None
    assert cache.get("missing", 5) == 5
    with pytest.raises(KeyError):
        cache["missing"]
    assert not cache.delete("missing")


def test_a_closed_manager_refuses(tmp_path):
    manager = vbus.CacheManager(home=tmp_path / "h")
    manager.close()
    manager.close()
    with pytest.raises(vbus.ClosedError):
        manager.get("x")
    with pytest.raises(ValueError):
        manager.put("x", b"y")


def test_a_config_with_a_wrong_key_names_it(tmp_path):
    with pytest.raises(vbus.ConfigError, match="no_such_key"):
        vbus.CacheManager({"cache_hierarchy": {"no_such_key": 1}}, home=tmp_path / "h")
    with pytest.raises(TypeError):
        vbus.CacheManager(42, home=tmp_path / "h")


def test_a_second_manager_on_the_same_home_is_refused_naming_the_owner(tmp_path):
    with vbus.CacheManager(home=tmp_path / "h"):
        with pytest.raises(vbus.HomeLockedError, match=str(os.getpid())):
            vbus.CacheManager(home=tmp_path / "h")
    # Released on close.
    vbus.CacheManager(home=tmp_path / "h").close()


def test_a_value_larger_than_every_tier_is_a_memory_error(tmp_path):
    config = {
        "cache_hierarchy": {
            "L1_VRAM": {"enabled": False},
            "L2_RAM": {"max_size_mb": 1},
            "L3_DISK": {"max_size_mb": 1},
        }
    }
    with vbus.CacheManager(config, home=tmp_path / "h") as manager:
        with pytest.raises(MemoryError):
            manager.put("big", b"x" * (2 << 20))
        assert manager.keys() == []


def test_after_fork_the_child_is_refused(tmp_path):
    manager = vbus.CacheManager(home=tmp_path / "h")
    pid = os.fork()
    if pid == 0:
        try:
            manager.get("x")
            os._exit(1)
        except vbus.ClosedError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    manager.put("x", b"parent still works")
    manager.close()
