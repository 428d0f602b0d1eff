"""Tiny GGUF files for tests, written with the ``gguf`` package's ``GGUFWriter``.

A default file is a few KB: architecture ``llama``, context length, block count, attention
shape, a chat template (or none), a file type and a couple of small tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFEndian, GGUFWriter

__all__ = ["CHAT_TEMPLATE", "gguf_bytes", "write_gguf"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}<|assistant|>"
)
_UNSET = object()


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str | None = "Tiny Llama",
    context_length: int = 2048,
    block_count: int = 2,
    embedding_length: int = 16,
    head_count: int | Sequence[int] = 4,
    head_count_kv: int = 2,
    key_length: int | None = 4,
    value_length: int | None = 4,
    chat_template: str | None = CHAT_TEMPLATE,
    file_type: int | None = 15,  # MOSTLY_Q4_K_M
    size_label: str | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
    vocab: Sequence[str] | None = None,
    big_endian: bool = False,
    pad_bytes: int = 0,
) -> Path:
    """Write a small but valid GGUF model file to ``path`` and return ``path``.

    ``tensors`` defaults to two float32 tensors (4x16 and 16: 80 parameters). ``vocab``
    adds a ``tokenizer.ggml.tokens`` string array (to exercise header parsing speed).
    ``pad_bytes`` adds a float32 tensor of about that many bytes (a bigger file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    endian = GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE
    writer = GGUFWriter(path, arch, endianess=endian)
    if name is not None:
        writer.add_name(name)
    if size_label is not None:
        writer.add_size_label(size_label)
    writer.add_context_length(context_length)
    writer.add_block_count(block_count)
    writer.add_embedding_length(embedding_length)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(head_count_kv)
    if key_length is not None:
        writer.add_key_length(key_length)
    if value_length is not None:
        writer.add_value_length(value_length)
    if file_type is not None:
        writer.add_file_type(file_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if vocab is not None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(vocab))
    if tensors is None:
        dtype = np.float32  # GGUFWriter byte-swaps for a big-endian file
        tensors = {
            "token_embd.weight": np.arange(64, dtype=dtype).reshape(4, 16),
            "output_norm.weight": np.ones(16, dtype=dtype),
        }
        if pad_bytes:
            tensors = {**tensors, "pad.weight": np.zeros((pad_bytes // 64, 16), dtype=dtype)}
    for tensor_name, data in tensors.items():
        writer.add_tensor(tensor_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_bytes(tmp_dir: Path, **kwargs: object) -> bytes:
    """The bytes of a :func:`write_gguf` file (written under ``tmp_dir``)."""
    path = write_gguf(tmp_dir / "_bytes.gguf", **kwargs)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.unlink()
    return data
