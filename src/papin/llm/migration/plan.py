"""The mapping half of :mod:`papin.llm.migration`: from what was detected and papin's current
configuration to a :class:`MigrationPlan` (what would change, what would be registered, and
what is skipped and why). Planning reads, never writes.

The legacy engine ran models in-process, so its settings map onto papin's embedded llama.cpp
provider (``llamacpp``), or onto Ollama when the legacy ``model_path`` points into Ollama
(as the original decided). Nothing is mapped onto a provider speculatively.

* ``model_path`` (a GGUF file): registered in the model store in place (not copied);
* ``model_id``: ``default_model`` (the id the model was registered under);
* the local engine itself: ``provider_type = "llamacpp"``;
* ``context_size``: ``providers.llamacpp.context_size`` (Ollama: ``default_options.context_size``);
* ``max_output_length``: ``providers.llamacpp.default_max_tokens`` (Ollama:
  ``default_options.max_tokens``);
* ``parameters.temperature``, ``top_p``, ``top_k``: ``default_options.temperature`` ...;
* ``parameters.repetition_penalty``: ``default_options.repeat_penalty``;
* ``parameters.use_mirostat``, ``mirostat_tau``, ``mirostat_eta``: skipped, papin has no
  provider-independent mirostat setting;
* ``enabled``, ``memory_usage_mb``: skipped, papin loads models on demand and works out their
  memory from the GGUF file.

Model files that are not GGUF (``.bin``, ``.ggml``, ``.pt``, ``.safetensors``, ``.onnx``...)
are reported as found but not migratable, with the reason.

A setting papin already has with another value is kept (reported as a conflict) unless
``overwrite`` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from papin.llm.config import LLMConfig, config_path
from papin.llm.errors import ConfigurationError
from papin.llm.migration.legacy_config import LegacyConfig
from papin.llm.migration.legacy_sources import (
    LegacyDetection,
    LegacyModelFile,
    default_store,
    real_path,
    resolve_path,
)

if TYPE_CHECKING:
    from papin.llm.store import ModelStore

__all__ = ["ConfigChange", "MigrationPlan", "ModelAction", "SkippedItem", "plan_migration"]

_LLAMACPP = "llamacpp"
_OLLAMA = "ollama"
_SAMPLING = (
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("repetition_penalty", "repeat_penalty"),
)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One papin setting: ``key`` (dotted, as ``papin config set`` takes it) goes from
    ``old`` to ``new``; ``source`` names the legacy setting it comes from."""

    key: str
    old: Any
    new: Any
    source: str


@dataclass(frozen=True, slots=True)
class ModelAction:
    """A legacy model file and its place in the model store: ``register`` it in place under
    ``model_id``, or it is ``already_registered`` under that id."""

    path: Path
    model_id: str
    action: Literal["register", "already_registered"]
    legacy_id: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class SkippedItem:
    """Something legacy that is not migrated, and why."""

    item: str
    reason: str


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """What :func:`papin.llm.migration.run_migration` would do.

    Attributes:
        config_path: papin's config file the plan applies to.
        file_existed: Whether that file existed when the plan was made.
        base: papin's configuration the plan was made from (file contents, validated).
        target: The configuration to write.
        changes: Settings that change.
        unchanged: Legacy settings papin already has with the same value.
        models: Usable legacy model files and what happens to each.
        skipped: What is not migrated, with the reason.
        store_root: The model store the models are registered in.
    """

    detection: LegacyDetection
    config_path: Path
    file_existed: bool
    base: LLMConfig
    target: LLMConfig
    changes: tuple[ConfigChange, ...]
    unchanged: tuple[ConfigChange, ...]
    models: tuple[ModelAction, ...]
    skipped: tuple[SkippedItem, ...]
    store_root: Path

    @property
    def to_register(self) -> tuple[ModelAction, ...]:
        """The models that would be registered."""
        return tuple(m for m in self.models if m.action == "register")

    @property
    def nothing_to_do(self) -> bool:
        """Whether running the plan would change nothing."""
        return not self.changes and not self.to_register

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``papin config migrate --dry-run --json``)."""
        return {
            "legacy": self.detection.to_dict(),
            "config_path": str(self.config_path),
            "store": str(self.store_root),
            "nothing_to_do": self.nothing_to_do,
            "changes": [_change_dict(c) for c in self.changes],
            "unchanged": [_change_dict(c) for c in self.unchanged],
            "models": [
                {
                    "path": str(m.path),
                    "model_id": m.model_id,
                    "action": m.action,
                    "legacy_id": m.legacy_id,
                    "size_bytes": m.size_bytes,
                }
                for m in self.models
            ],
            "skipped": [{"item": s.item, "reason": s.reason} for s in self.skipped],
        }


def _change_dict(change: ConfigChange) -> dict[str, Any]:
    return {"key": change.key, "old": change.old, "new": change.new, "source": change.source}


def _free_id(wanted: str, taken: set[str]) -> str:
    from papin.llm.store.sources import slug_id

    base = slug_id(wanted).removesuffix(".gguf").removesuffix(".json")
    if not base:
        return ""
    candidate, n = base, 1
    while candidate in taken:
        candidate = f"{base}-legacy" if n == 1 else f"{base}-legacy-{n}"
        n += 1
    return candidate


class _Planner:
    def __init__(self, cfg: LLMConfig, overwrite: bool) -> None:
        self.cfg = cfg
        self.overwrite = overwrite
        self.changes: list[ConfigChange] = []
        self.unchanged: list[ConfigChange] = []
        self.skipped: list[SkippedItem] = []

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append(SkippedItem(item, reason))

    def propose(self, key: str, current: Any, new: Any, source: str) -> bool:
        """Set ``key`` to ``new`` unless papin has another value; True if it ends as ``new``."""
        if current == new:
            self.unchanged.append(ConfigChange(key, current, new, source))
            return True
        if current is not None and not self.overwrite:
            self.skip(
                source,
                f"papin already has {key} = {current!r} (legacy value {new!r}); kept. "
                "Run with --overwrite to replace it.",
            )
            return False
        try:
            self.cfg = self.cfg.set_value(key, new)
        except ConfigurationError as exc:
            self.skip(source, f"{new!r} is not a valid {key}: {exc.message}")
            return False
        self.changes.append(ConfigChange(key, current, new, source))
        return True

    def provider_setting(self, provider: str, name: str, new: Any, source: str) -> None:
        from pydantic import ValidationError

        from papin.llm.errors import format_validation_error
        from papin.llm.factory import get_provider_factory

        config_class = get_provider_factory().provider_class(provider).config_class
        try:
            config_class.model_validate({name: new})
        except ValidationError as exc:
            problem = format_validation_error(exc, f"{provider} setting")
            self.skip(source, f"{new!r} does not fit papin's {provider} setting {name}: {problem}")
            return
        section = "provider_config" if self.cfg.provider_type == provider else f"providers.{provider}"
        self.propose(f"{section}.{name}", self.cfg.settings_for(provider).get(name), new, source)

    def option(self, name: str, new: Any, source: str) -> None:
        current = getattr(self.cfg.default_options, name) if self.cfg.default_options else None
        self.propose(f"default_options.{name}", current, new, source)


def _names_in(root: Path) -> set[str]:
    """Ids with a record or a model file in the store directory, usable or not: registering
    never overwrites anything there, so a rollback only has to remove what it added."""
    try:
        names = os.listdir(root)
    except OSError:
        return set()
    return {n.rsplit(".", 1)[0].lower() for n in names if n.lower().endswith((".json", ".gguf"))}


def _choose_models(
    detection: LegacyDetection, legacy: LegacyConfig | None, store: ModelStore, planner: _Planner, cwd: Path
) -> tuple[list[ModelAction], str | None]:
    """The store actions for the usable model files, and the id of the legacy default model."""
    from papin.llm.store.sources import slug_id

    existing = store.list()
    by_path = {real_path(m.path): m for m in existing}
    taken = {m.id for m in existing} | _names_in(store.root)
    usable: list[LegacyModelFile] = []
    for found in detection.model_files:
        if found.usable:
            usable.append(found)
        else:
            planner.skip(f"model file {found.path}", found.reason or "not usable by papin")
    default_file: LegacyModelFile | None = None
    if legacy is not None and legacy.model_id:
        named = real_path(resolve_path(legacy.model_path, cwd)) if legacy.model_path else None
        wanted = slug_id(legacy.model_id)
        default_file = next((f for f in usable if real_path(f.path) == named), None) or next(
            (f for f in usable if slug_id(f.legacy_id) == wanted), None
        )
    actions: list[ModelAction] = []
    default_id: str | None = None
    for found in usable:
        record = by_path.get(real_path(found.path))
        if record is not None:
            model_id = record.id
            actions.append(
                ModelAction(found.path, model_id, "already_registered", found.legacy_id, found.size_bytes)
            )
        else:
            wanted_id = (
                legacy.model_id if found is default_file and legacy and legacy.model_id else found.legacy_id
            )
            model_id = _free_id(wanted_id, taken)
            if not model_id:
                planner.skip(f"model file {found.path}", "no model id can be made from its name")
                continue
            taken.add(model_id)
            actions.append(ModelAction(found.path, model_id, "register", found.legacy_id, found.size_bytes))
        if found is default_file:
            default_id = model_id
    if default_id is None and legacy is not None and legacy.model_id and legacy.model_path:
        # The legacy model may already be papin's (on Linux the legacy models directory
        # <data dir>/papin/models is papin's own store).
        record = by_path.get(real_path(resolve_path(legacy.model_path, cwd)))
        if record is not None:
            default_id = record.id
    return actions, default_id


def _map_config(planner: _Planner, legacy: LegacyConfig, default_id: str | None, cwd: Path) -> None:
    target = _OLLAMA if legacy.model_path and _OLLAMA in legacy.model_path.lower() else _LLAMACPP
    source_provider = "model_path" if target == _OLLAMA else "engine"
    model = legacy.model_id if target == _OLLAMA else default_id
    current = planner.cfg.provider_type
    if model is None:
        why = (
            f"no usable GGUF file was found for the legacy model {legacy.model_id!r}"
            if legacy.model_id
            else "the legacy configuration names no model"
        )
        planner.skip("model_id", f"{why}; papin keeps its own default model.")
        if current is None:
            planner.skip(source_provider, f"{why}, so papin keeps choosing its provider automatically.")
    else:
        current_model = planner.cfg.default_model
        if (current in (None, target) and current_model in (None, model)) or planner.overwrite:
            # The provider and the model go together: never one without the other.
            planner.propose("provider_type", current, target, source_provider)
            planner.propose("default_model", current_model, model, "model_id")
        else:
            have = f"provider_type = {current!r}" if current not in (None, target) else ""
            if current_model not in (None, model):
                have += (" and " if have else "") + f"default_model = {current_model!r}"
            hint = (
                f" The legacy model is in the model store as {model!r}: use it with "
                f"'papin --provider llamacpp --model {model}'."
                if target == _LLAMACPP
                else ""
            )
            planner.skip(
                f"{source_provider}, model_id",
                f"papin already has {have}; kept, with its provider choice (--overwrite replaces them "
                f"with {target} and {model!r}).{hint}",
            )
    if legacy.model_path and target == _LLAMACPP:
        path = resolve_path(legacy.model_path, cwd)
        if not path.exists():
            planner.skip("model_path", f"{path} does not exist.")

    if target == _LLAMACPP:
        if legacy.context_size is not None:
            planner.provider_setting(_LLAMACPP, "context_size", legacy.context_size, "context_size")
        if legacy.max_output_length is not None:
            planner.provider_setting(
                _LLAMACPP, "default_max_tokens", legacy.max_output_length, "max_output_length"
            )
    else:
        if legacy.context_size is not None:
            planner.option("context_size", legacy.context_size, "context_size")
        if legacy.max_output_length is not None:
            planner.option("max_tokens", legacy.max_output_length, "max_output_length")

    params = legacy.parameters
    values = [(f"parameters.{old}", new, getattr(params, old)) for old, new in _SAMPLING]
    values = [v for v in values if v[2] is not None]
    current = planner.cfg.provider_type
    if values and current is not None and current != target:
        for source, _, _ in values:
            planner.skip(
                source,
                f"the legacy sampling settings were for the legacy local engine, and papin is configured "
                f"for {current!r}; kept papin's. Set it with 'papin config set default_options.NAME VALUE'.",
            )
    else:
        for source, name, value in values:
            planner.option(name, value, source)
    _skip_mirostat(planner, legacy)
    if legacy.enabled is not None:
        planner.skip("enabled", "papin has no switch to disable the model: models are loaded when used.")
    if legacy.memory_usage_mb is not None:
        planner.skip(
            "memory_usage_mb",
            "papin works out memory needs from the GGUF file itself ('papin models fit MODEL').",
        )
    for key in legacy.unknown:
        planner.skip(key, "not a setting of the legacy LLM configuration; papin has no equivalent.")
    for key, problem in legacy.invalid.items():
        planner.skip(key, f"invalid value in the legacy configuration: {problem}.")


def _skip_mirostat(planner: _Planner, legacy: LegacyConfig) -> None:
    p = legacy.parameters
    if p.use_mirostat:
        tau = p.mirostat_tau if p.mirostat_tau is not None else 5.0
        eta = p.mirostat_eta if p.mirostat_eta is not None else 0.1
        planner.skip(
            "parameters.use_mirostat",
            "papin has no mirostat setting that every provider understands; with the embedded "
            "provider pass it per call: GenerationOptions(additional_params={'mirostat_mode': 1, "
            f"'mirostat_tau': {tau}, 'mirostat_eta': {eta}}}).",
        )
    elif p.use_mirostat is not None:
        planner.skip(
            "parameters.use_mirostat", "off in the legacy configuration, as in papin: nothing to set."
        )
    for name in ("mirostat_tau", "mirostat_eta"):
        if getattr(p, name) is not None:
            planner.skip(
                f"parameters.{name}",
                "used only with mirostat (see parameters.use_mirostat)."
                if p.use_mirostat
                else "used only with mirostat, which is off.",
            )


def _check_sections(base: LLMConfig, target: LLMConfig) -> None:
    """Validate every provider section the plan changes with the provider's own settings."""
    from papin.llm.factory import get_provider_factory

    factory = get_provider_factory()
    names = dict.fromkeys(n for n in (target.provider_type, *target.providers) if n)
    for name in names:
        settings = target.settings_for(name)
        if settings != base.settings_for(name) and name in factory.registered_providers():
            try:
                factory.make_config(name, settings)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"Migrating would leave papin's {name} settings invalid ({exc.message}); fix them "
                    "first with 'papin config set'."
                ) from None


def plan_migration(
    detection: LegacyDetection,
    current_config: LLMConfig | None = None,
    *,
    config_file: Path | None = None,
    store: ModelStore | None = None,
    overwrite: bool = False,
    cwd: Path | None = None,
) -> MigrationPlan:
    """Work out what migrating ``detection`` onto papin's configuration would change.

    ``current_config`` defaults to the contents of papin's config file (``config_file``,
    default :func:`papin.llm.config.config_path`), without environment overrides, since that
    file is what gets written. ``store`` defaults to the embedded provider's model store.
    Settings papin already has with another value are kept unless ``overwrite``.

    Raises:
        ConfigurationError: the legacy configuration was found but cannot be read (the
            message names the file and the problem), or papin's own file is invalid.
    """
    if detection.config_error:
        raise ConfigurationError(detection.config_error)
    path = config_file or config_path()
    file_existed = path.is_file()
    base = current_config if current_config is not None else LLMConfig.from_file(path)
    store = store if store is not None else default_store(base)
    cwd = cwd or Path.cwd()
    planner = _Planner(base, overwrite)
    legacy = detection.config
    actions, default_id = _choose_models(detection, legacy, store, planner, cwd)
    if legacy is not None:
        _map_config(planner, legacy, default_id, cwd)
    _check_sections(base, planner.cfg)
    return MigrationPlan(
        detection=detection,
        config_path=path,
        file_existed=file_existed,
        base=base,
        target=planner.cfg,
        changes=tuple(planner.changes),
        unchanged=tuple(planner.unchanged),
        models=tuple(actions),
        skipped=tuple(planner.skipped),
        store_root=store.root,
    )
