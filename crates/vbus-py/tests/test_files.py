"""load_file and save_file against the safetensors library."""

import numpy as np
import pytest

import vbus


def tensors():
    return {
        "a": np.arange(10, dtype=np.float32),
        "b": np.ones((3, 2), dtype=np.int64),
        "empty": np.zeros((0,), dtype=np.float16),
        "scalar": np.array(3.5, dtype=np.float64),
    }


def test_save_then_load_matches_safetensors_both_ways(tmp_path):
    from safetensors.numpy import load_file, save_file

    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    vbus.save_file(tensors(), ours, metadata={"who": "vbus"})
    save_file(tensors(), str(theirs))
    for path in (ours, theirs):
        for loaded in (vbus.load_file(path, framework="np"), load_file(str(path))):
            assert sorted(loaded) == sorted(tensors())
            for name, array in tensors().items():
                assert loaded[name].dtype == array.dtype
                assert np.array_equal(loaded[name], array)


def test_loaded_arrays_are_writable_copies_of_the_file(tmp_path):
    path = tmp_path / "f.safetensors"
    vbus.save_file(tensors(), path)
    loaded = vbus.load_file(path, framework="np")
    loaded["a"][0] = 99
    assert vbus.load_file(path, framework="np")["a"][0] == 0


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[:4], "8-byte header length"),
        (lambda b: b[:-3], "data bytes"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "runs past the end"),
        (lambda b: b[:8] + b"[" + b[9:], "not a JSON object"),
        (lambda b: b.replace(b'"data_offsets":[0,40]', b'"data_offsets":[0,44]'), "outside"),
        (lambda b: b.replace(b'"shape":[10]', b'"shape":[11]'), "need 44"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path, damage, reason):
    path = tmp_path / "f.safetensors"
    vbus.save_file({"a": np.arange(10, dtype=np.float32)}, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(vbus.SafetensorsError, match=reason) as info:
        vbus.load_file(path, framework="np")
    assert isinstance(info.value, ValueError)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        vbus.load_file(tmp_path / "nope", framework="np")
