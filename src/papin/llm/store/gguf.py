"""Read a GGUF model file's metadata without loading its weights.

:func:`read_gguf_info` parses only the header (the key/value metadata and the tensor
directory) straight from a read-only memory map, so it touches a few megabytes at most
whatever the model's size. It needs no third-party package (``gguf.GGUFReader`` decodes every
array, which takes seconds on a model with a 256k-token vocabulary).

The header is also checked for consistency: a file that is not GGUF, is an unsupported
version, is corrupt, or is shorter than its tensor directory says (an interrupted download)
raises :class:`~papin.llm.errors.InvalidModelFileError` with a message naming the file.

Format reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from papin.llm.errors import InvalidModelFileError

__all__ = [
    "FILE_TYPES",
    "GGML_TYPES",
    "GGUFInfo",
    "describe_non_gguf",
    "int_value",
    "read_gguf_info",
    "size_label",
]

#: ``general.file_type`` values (``llama_ftype`` in llama.h) and their usual names.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
    21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S",
    27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

#: ggml tensor types: id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip

_MAGIC = b"GGUF"
_HEADER_SIZE = 24  # magic, version, tensor count, key/value count
_STRING, _ARRAY = 8, 9
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_MAX_DIMS = 8
_KEEP_ARRAYS = ("attention.head_count", "attention.head_count_kv")  # may be per-layer arrays
_SMALL_ARRAY = 65536


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    """What a GGUF header says about its model (no weights are read).

    The tensor directory gives the memory plan: ``layer_bytes`` holds the size of each
    repeating block's tensors (``blk.N.*``, in order), ``other_bytes`` everything else
    (embeddings, output head, norms); ``output_bytes`` is what llama.cpp puts on the GPU with
    the output layer (``output.weight`` and ``output_norm``, or a copy of ``token_embd`` when
    the output is tied to it: ``output_tied``). ``vocab_size`` comes from ``token_embd``.
    They are ``None`` in records written before papin read them.

    ``quantization`` is the file type name (``"Q4_K_M"``) from ``general.file_type``, or the
    dominant tensor type when the file does not say. ``parameter_count`` is the number of
    weights (the sum of all tensors' elements); ``size_label`` is ``general.size_label`` or a
    label derived from the count (``"270M"``). ``file_size`` is in bytes.
    """

    architecture: str | None = None
    name: str | None = None
    size_label: str | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    has_chat_template: bool = False
    chat_template: str | None = None
    file_size: int = 0
    vocab_size: int | None = None
    layer_bytes: tuple[int, ...] | None = None
    output_bytes: int | None = None
    other_bytes: int | None = None
    output_tied: bool = False

    @property
    def weights_bytes(self) -> int:
        """Bytes of all the weights: from the tensor directory, else the file size."""
        if self.layer_bytes is not None and self.other_bytes is not None:
            return sum(self.layer_bytes) + self.other_bytes
        return self.file_size

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.layer_bytes is not None:
            out["layer_bytes"] = list(self.layer_bytes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GGUFInfo:
        """Build from :meth:`to_dict` output; unknown keys are ignored (records written before
        a field existed give its default)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if isinstance(values.get("layer_bytes"), list):
            values["layer_bytes"] = tuple(int(v) for v in values["layer_bytes"])
        return cls(**values)


def describe_non_gguf(head: bytes) -> str:
    """Say what a file that is not GGUF seems to be, from its first bytes.

    >>> describe_non_gguf(b"<!DOCTYPE html><html>")
    'it is an HTML page (an error or login page saved instead of the model?)'
    >>> describe_non_gguf(b"\\x00\\x01")
    "it starts with b'\\\\x00\\\\x01' instead of 'GGUF'"
    """
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return "it is an HTML page (an error or login page saved instead of the model?)"
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer file, not the model itself (fetch it with 'git lfs pull')"
    if text.startswith((b"{", b"[")):
        return "it is a JSON document, not a model"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"algg"):
        return "it is an old GGML/GGJT file; llama.cpp needs GGUF (convert it or get a GGUF build)"
    if head[:4] == b"PK\x03\x04":
        return "it is a ZIP archive (a PyTorch checkpoint?), not a GGUF model"
    if head[8:9] == b"{":
        return "it looks like a safetensors file; llama.cpp needs GGUF (convert it first)"
    return f"it starts with {head[:8]!r} instead of 'GGUF'"


class _TensorSizes:
    """Sizes of tensors by role, gathered while the tensor directory is read."""

    __slots__ = ("embedding", "layers", "other", "output", "output_norm", "seen", "vocab")

    def __init__(self) -> None:
        self.layers: dict[int, int] = {}
        self.other = 0
        self.embedding: int | None = None
        self.output: int | None = None
        self.output_norm = 0
        self.vocab: int | None = None
        self.seen = False

    def add(self, name: bytes, nbytes: int, dims: list[int]) -> None:
        self.seen = True
        if name.startswith(b"blk."):
            end = name.find(b".", 4)
            index = name[4:end]
            if end > 4 and index.isdigit():
                number = int(index)
                self.layers[number] = self.layers.get(number, 0) + nbytes
                return
        self.other += nbytes
        if name == b"token_embd.weight":
            self.embedding = nbytes
            self.vocab = dims[1] if len(dims) >= 2 else None
        elif name == b"output.weight":
            self.output = nbytes
        elif name.startswith(b"output_norm."):
            self.output_norm += nbytes

    def fields(self, block_count: int | None) -> dict[str, Any]:
        if not self.seen:
            return {}
        count = max(block_count or 0, max(self.layers) + 1 if self.layers else 0)
        tied = self.output is None and self.embedding is not None
        head = self.output if self.output is not None else self.embedding or 0
        return {
            "vocab_size": self.vocab,
            "layer_bytes": tuple(self.layers.get(i, 0) for i in range(count)),
            "output_bytes": head + self.output_norm,
            "other_bytes": self.other,
            "output_tied": tied,
        }


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Reader:
    """Bounds-checked little/big-endian reads from a buffer."""

    __slots__ = ("buf", "endian", "pos", "size", "u32", "u64")

    def __init__(self, buf: mmap.mmap, size: int, endian: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.endian = endian
        self.u32: Callable[[Any, int], tuple[int]] = struct.Struct(endian + "I").unpack_from
        self.u64: Callable[[Any, int], tuple[int]] = struct.Struct(endian + "Q").unpack_from

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated

    def read_u32(self) -> int:
        self.need(4)
        value = self.u32(self.buf, self.pos)[0]
        self.pos += 4
        return value

    def read_u64(self) -> int:
        self.need(8)
        value = self.u64(self.buf, self.pos)[0]
        self.pos += 8
        return value

    def read_string(self) -> str:
        n = self.read_u64()
        self.need(n)
        start = self.pos
        self.pos += n
        return self.buf[start : self.pos].decode("utf-8", "replace")

    def read_bytes(self) -> bytes:
        n = self.read_u64()
        self.need(n)
        start = self.pos
        self.pos += n
        return self.buf[start : self.pos]

    def skip_string(self) -> None:
        n = self.read_u64()
        self.need(n)
        self.pos += n

    def read_value(self, vtype: int, keep: bool) -> Any:
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            width = struct.calcsize(fmt)
            self.need(width)
            value = struct.unpack_from(self.endian + fmt, self.buf, self.pos)[0]
            self.pos += width
            return value
        if vtype == _STRING:
            if keep:
                return self.read_string()
            self.skip_string()
            return None
        if vtype == _ARRAY:
            return self._read_array(keep)
        raise _Corrupt(f"unknown metadata value type {vtype}")

    def _read_array(self, keep: bool) -> Any:
        etype = self.read_u32()
        count = self.read_u64()
        fmt = _SCALAR_FORMATS.get(etype)
        if fmt is not None:
            nbytes = struct.calcsize(fmt) * count
            self.need(nbytes)
            values = None
            if keep and count <= _SMALL_ARRAY:
                values = list(struct.unpack_from(f"{self.endian}{count}{fmt}", self.buf, self.pos))
            self.pos += nbytes
            return values
        if etype == _STRING:
            if count * 8 > self.size - self.pos:
                raise _Truncated
            if keep and count <= _SMALL_ARRAY:
                return [self.read_string() for _ in range(count)]
            # The hot loop of the parser (a 256k-token vocabulary): locals only.
            u64, buf, pos, size = self.u64, self.buf, self.pos, self.size
            for _ in range(count):
                if pos + 8 > size:
                    raise _Truncated
                pos += 8 + u64(buf, pos)[0]
            if pos > size:
                raise _Truncated
            self.pos = pos
            return None
        if etype == _ARRAY:
            if count * 12 > self.size - self.pos:
                raise _Truncated
            for _ in range(count):
                self._read_array(False)
            return None
        raise _Corrupt(f"unknown array element type {etype}")


def int_value(value: Any) -> int | None:
    """An integer metadata value; a per-layer array gives its maximum."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return int(max(value))
    return None


def _str_value(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def size_label(count: int) -> str:
    """A short label for a parameter count, as model names use.

    >>> size_label(268_098_176), size_label(7_241_732_096), size_label(1_050_000_000)
    ('268M', '7.2B', '1.1B')
    """
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return text + suffix
    return str(count)


def _parse(buf: mmap.mmap, size: int, file_size: int) -> GGUFInfo:
    version = struct.unpack_from("<I", buf, 4)[0]
    endian = "<"
    if version & 0xFFFF == 0 and version:  # written on a big-endian machine
        endian = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version == 1:
        raise _Corrupt("it is GGUF version 1, an early format llama.cpp no longer reads (get a newer file)")
    if version not in (2, 3):
        raise _Corrupt(f"it has unsupported GGUF version {version}")
    r = _Reader(buf, size, endian)
    r.pos = 8
    n_tensors = r.read_u64()
    n_kv = r.read_u64()
    if n_kv * 13 > size or n_tensors * 32 > size:
        raise _Corrupt(f"its header claims {n_kv} metadata entries and {n_tensors} tensors")

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.read_string()
        vtype = r.read_u32()
        keep = vtype != _ARRAY or key.endswith(_KEEP_ARRAYS)
        value = r.read_value(vtype, keep)
        if keep:
            meta[key] = value

    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"its general.alignment ({alignment!r}) is not a power of two")

    n_params = 0
    data_needed = 0
    bytes_by_type: dict[int, int] = {}
    tensors = _TensorSizes()
    for _ in range(n_tensors):
        name = r.read_bytes()
        n_dims = r.read_u32()
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"a tensor has {n_dims} dimensions")
        elements = 1
        dims = []
        for _ in range(n_dims):
            dims.append(r.read_u64())
            elements *= dims[-1]
        ttype = r.read_u32()
        offset = r.read_u64()
        n_params += elements
        spec = GGML_TYPES.get(ttype)
        nbytes = elements // spec[1] * spec[2] if spec is not None else 0
        data_needed = max(data_needed, offset + nbytes)
        if n_dims >= 2:
            bytes_by_type[ttype] = bytes_by_type.get(ttype, 0) + nbytes
        tensors.add(name, nbytes, dims)
    data_start = -(-r.pos // alignment) * alignment
    if n_tensors and data_start + data_needed > file_size:
        raise _Truncated

    arch = _str_value(meta.get("general.architecture"))

    def arch_int(suffix: str) -> int | None:
        return int_value(meta.get(f"{arch}.{suffix}")) if arch else None

    file_type = int_value(meta.get("general.file_type"))
    quantization: str | None = None
    if file_type is not None:
        quantization = FILE_TYPES.get(file_type, f"type {file_type}")
    elif bytes_by_type:
        dominant = max(bytes_by_type, key=lambda t: bytes_by_type[t])
        quantization = GGML_TYPES[dominant][0] if dominant in GGML_TYPES else None
    template = _str_value(meta.get("tokenizer.chat_template"))
    label = _str_value(meta.get("general.size_label"))
    if label is None and n_params:
        label = size_label(n_params)
    return GGUFInfo(
        architecture=arch,
        name=_str_value(meta.get("general.name")),
        size_label=label,
        parameter_count=n_params or None,
        quantization=quantization,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        has_chat_template=template is not None,
        chat_template=template,
        file_size=file_size,
        **tensors.fields(arch_int("block_count")),
    )


def read_gguf_info(
    path: Path | str, *, display_name: str | None = None, total_size: int | None = None
) -> GGUFInfo:
    """Read the metadata of the GGUF file at ``path`` without loading its weights.

    ``display_name`` replaces the path in error messages (the store validates a download's
    temporary file but names its source). ``total_size`` is the size of the whole model when
    ``path`` is only its first part (a model shipped in chunks, like the default model's
    package): the header must lie in this part.

    Raises:
        InvalidModelFileError: the file cannot be read, is not GGUF, or is truncated or
            corrupt (the message names the file and says what is wrong).
    """
    path = Path(path)
    name = display_name or str(path)
    size = 0
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if head[:4] != _MAGIC:
                why = describe_non_gguf(head) if head else "it is empty"
                raise InvalidModelFileError(f"{name} is not a GGUF model file: {why}.")
            if size < _HEADER_SIZE:
                raise _Truncated
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, size, max(size, total_size or 0))
    except _Truncated:
        raise InvalidModelFileError(
            f"{name} is a truncated GGUF file ({size} bytes): it ends before the data its "
            "header describes (an incomplete download or copy?)."
        ) from None
    except _Corrupt as exc:
        raise InvalidModelFileError(f"{name} is not a usable GGUF file: {exc}.") from None
    except IsADirectoryError:
        raise InvalidModelFileError(f"{name} is a directory, not a GGUF model file.") from None
    except OSError as exc:
        raise InvalidModelFileError(f"Cannot read the model file {name}: {exc.strerror or exc}.") from exc
