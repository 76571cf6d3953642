"""Streaming access to safetensors files: read headers, copy tensors byte for byte.

The converter never materialises a whole shard: untouched tensors are copied as raw byte
ranges from the source file, so memory stays at about one tensor and the bytes stay exact.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import torch

DTYPE_TO_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_DTYPE = {v: k for k, v in DTYPE_TO_TORCH.items()}
_MAX_HEADER = 100 * 1024 * 1024
_COPY_CHUNK = 16 * 1024 * 1024


class CorruptShardError(ValueError):
    """A safetensors file whose header or data layout is unreadable or inconsistent."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardHeader:
    path: str
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and validate a safetensors header (offsets inside the file, sizes consistent)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptShardError(f"{path}: truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CorruptShardError(f"{path}: header length {header_len} exceeds the file")
        try:
            raw = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptShardError(f"{path}: header is not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise CorruptShardError(f"{path}: header is not a JSON object")
    data_start = 8 + header_len
    metadata = raw.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    for name, info in raw.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptShardError(f"{path}: malformed entry for tensor {name!r}") from err
        if dtype not in DTYPE_TO_TORCH:
            raise CorruptShardError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        numel = 1
        for dim in shape:
            numel *= dim
        itemsize = torch.empty((), dtype=DTYPE_TO_TORCH[dtype]).element_size()
        if end - begin != numel * itemsize or begin < 0:
            raise CorruptShardError(f"{path}: tensor {name!r} has inconsistent data offsets")
        if data_start + end > size:
            raise CorruptShardError(
                f"{path}: tensor {name!r} ends at byte {data_start + end}, file has {size} "
                "(truncated shard?)"
            )
        tensors[name] = TensorEntry(name, dtype, shape, data_start + begin, data_start + end)
    return ShardHeader(path=path, metadata=metadata, tensors=tensors)


def read_tensor(header: ShardHeader, name: str) -> torch.Tensor:
    entry = header.tensors[name]
    with open(header.path, "rb") as f:
        f.seek(entry.begin)
        data = bytearray(f.read(entry.nbytes))
    if len(data) != entry.nbytes:
        raise CorruptShardError(f"{header.path}: tensor {name!r} is truncated")
    flat = (
        torch.frombuffer(data, dtype=DTYPE_TO_TORCH[entry.dtype])
        if data
        else torch.empty(0, dtype=DTYPE_TO_TORCH[entry.dtype])
    )
    return flat.reshape(entry.shape)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


class StreamingShardWriter:
    """Writes one safetensors file whose layout is declared up front, tensor by tensor.

    ``layout`` lists (name, dtype, shape) in file order; then :meth:`write_bytes` or
    :meth:`copy_from` must be called for each, in that order.
    """

    def __init__(
        self, path: str, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
    ):
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        self._expected: list[tuple[str, int]] = []
        offset = 0
        for name, dtype, shape in layout:
            numel = 1
            for dim in shape:
                numel *= dim
            nbytes = numel * torch.empty((), dtype=DTYPE_TO_TORCH[dtype]).element_size()
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._expected.append((name, nbytes))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data must start 8-byte aligned
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)
        self._next = 0

    def _check(self, name: str, nbytes: int) -> None:
        expected_name, expected_bytes = self._expected[self._next]
        if (name, nbytes) != (expected_name, expected_bytes):
            raise RuntimeError(
                f"writer expected {expected_name} ({expected_bytes} B), got {name} ({nbytes} B)"
            )
        self._next += 1

    def write_bytes(self, name: str, data: bytes) -> None:
        self._check(name, len(data))
        self._file.write(data)

    def copy_from(self, name: str, header: ShardHeader, source_name: str | None = None) -> None:
        entry = header.tensors[source_name or name]
        self._check(name, entry.nbytes)
        with open(header.path, "rb") as src:
            src.seek(entry.begin)
            remaining = entry.nbytes
            while remaining:
                chunk = src.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    raise CorruptShardError(f"{header.path}: tensor {entry.name!r} is truncated")
                self._file.write(chunk)
                remaining -= len(chunk)

    def close(self) -> None:
        if self._next != len(self._expected):
            self._file.close()
            raise RuntimeError(f"writer closed after {self._next}/{len(self._expected)} tensors")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
