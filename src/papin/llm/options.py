"""Per-call generation options, shared by every provider.

Every field is optional: ``None`` means "use the backend's own default". Each provider maps
the fields onto its backend's names (``max_tokens`` becomes Ollama's ``num_predict``...);
``additional_params`` passes provider-specific extras through unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GenerationOptions"]


class GenerationOptions(BaseModel):
    """Sampling and runtime options for one generation.

    Example::

        GenerationOptions(max_tokens=64, temperature=0.0, seed=42, stop=["\\n\\n"])
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    max_tokens: int | None = Field(None, ge=1, description="Maximum tokens to generate.")
    temperature: float | None = Field(None, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Sample from the k most likely tokens.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Minimum token probability.")
    repeat_penalty: float | None = Field(None, ge=0.0, description="Penalty for repeated tokens.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: list[str] | None = Field(None, description="Stop sequences.")
    seed: int | None = Field(None, description="Random seed for reproducible sampling.")
    context_size: int | None = Field(None, ge=1, description="Context window (num_ctx).")
    gpu_layers: int | None = Field(None, ge=-1, description="Layers to offload; -1 = all/auto.")
    threads: int | None = Field(None, ge=1, description="CPU threads for generation.")
    batch_size: int | None = Field(None, ge=1, description="Prompt processing batch size.")
    system: str | None = Field(None, description="System prompt (completion mode).")
    keep_alive: float | str | None = Field(
        None, description="How long the backend keeps the model loaded (seconds or '5m')."
    )
    deadline_seconds: float | None = Field(
        None,
        gt=0,
        description="A limit on the whole generation, download and model load included (papin's "
        "own: never sent to the backend). Past it the stream is closed (the backend stops) and "
        "ProviderTimeoutError(phase='deadline') is raised.",
    )
    additional_params: dict[str, Any] = Field(
        default_factory=dict, description="Provider-specific options passed through unchanged."
    )

    #: Options papin applies itself; no backend request carries them.
    PAPIN_ONLY: ClassVar[frozenset[str]] = frozenset({"deadline_seconds", "additional_params"})

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    def merged(self, defaults: GenerationOptions | None) -> GenerationOptions:
        """Return these options with unset fields taken from ``defaults``."""
        if defaults is None:
            return self
        data = defaults.model_dump(exclude_none=True)
        mine = self.model_dump(exclude_none=True)
        extra = {**data.pop("additional_params", {}), **mine.pop("additional_params", {})}
        data.update(mine)
        data["additional_params"] = extra
        return GenerationOptions.model_validate(data)
