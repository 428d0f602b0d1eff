"""The synchronous facade matches LLMManager: every public method and property has a sync
counterpart with the same parameters, or is listed as async-only with the reason."""

from __future__ import annotations

import inspect

from papin.llm.manager import LLMManager
from papin.llm.sync import SyncLLMManager

#: Async-only members and why (also said in SyncLLMManager's docstring).
ASYNC_ONLY = {
    "model_changes": "an async iterator that waits between changes; use subscribe_model_changes",
    "start_download": "a background download needs a loop that runs between calls; use download_model",
    "aclose": "the facade's close()",
}


def public(cls: type) -> dict[str, object]:
    return {name: value for name, value in vars(cls).items() if not name.startswith("_")}


def test_every_manager_member_has_a_sync_counterpart() -> None:
    missing = sorted(set(public(LLMManager)) - set(public(SyncLLMManager)) - set(ASYNC_ONLY))
    assert missing == [], f"SyncLLMManager lacks {missing}"
    assert "close" in public(SyncLLMManager)
    for name in ASYNC_ONLY:
        assert name in SyncLLMManager.__doc__ or ""


def test_counterparts_take_the_same_parameters_and_kinds() -> None:
    for name, member in public(LLMManager).items():
        if name in ASYNC_ONLY:
            continue
        sync = public(SyncLLMManager)[name]
        assert isinstance(sync, property) == isinstance(member, property), name
        if isinstance(member, property):
            continue
        function = member.__func__ if isinstance(member, classmethod) else member
        sync_function = sync.__func__ if isinstance(sync, classmethod) else sync
        params = list(inspect.signature(function).parameters)  # type: ignore[arg-type]
        sync_params = list(inspect.signature(sync_function).parameters)  # type: ignore[arg-type]
        assert params == sync_params, name
