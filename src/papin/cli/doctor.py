"""``papin doctor``: everything papin knows about this machine, in one report.

The hardware it detected (CPU, memory, GPUs, what the installed llama.cpp can do), the
settings it would tune for a model and why, whether that model fits, the LLM servers and
model files discovery finds, which provider it would use and why, and the configuration and
legacy-migration state. Every part is gathered even when another fails: the report says what
could not be found and why, and the command exits with 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from papin.cli._common import CliState, echo_json, get_console, human_bytes, one_line, pass_state

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig
    from papin.llm.discovery import DiscoveryResult
    from papin.llm.hardware import HardwareInfo
    from papin.llm.hardware.fit import FitReport
    from papin.llm.hardware.tuning import TunedSettings
    from papin.llm.store.gguf import GGUFInfo

__all__ = ["doctor"]


@dataclass
class _Report:
    """What the doctor found; ``problems`` are the parts it could not find, with why."""

    config: LLMConfig
    config_file: str
    hardware: HardwareInfo
    model: str
    model_source: str | None = None
    model_info: GGUFInfo | None = None
    tuned: TunedSettings | None = None
    fit: FitReport | None = None
    discovery: DiscoveryResult | None = None
    chosen: str | None = None
    endpoint: str | None = None
    reason: str | None = None
    migration: dict[str, Any] | None = None
    safety: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@click.command()
@click.option(
    "--model", "-m", "model", help="Tune and check the fit of this model (default: the default one)."
)
@click.option("--refresh", is_flag=True, help="Probe again instead of using cached results.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_state
def doctor(state: CliState, model: str | None, refresh: bool, as_json: bool) -> None:
    """Check this machine: hardware, tuned settings, model fit, servers, and provider choice.

    Shows the CPU (model, cores, SIMD features), memory (and a container's limit), GPUs, the
    installed llama.cpp build's features, the settings papin tunes for MODEL with the reason for
    each, whether MODEL fits (GPU, partial offload, CPU, or not), the LLM servers and model
    files found, and which provider papin uses and why.
    """
    report = _gather(state, model, refresh)
    if as_json:
        echo_json(_as_json(report))
        return
    _print(report)


# -- gathering -------------------------------------------------------------------------------------


def _gather(state: CliState, model: str | None, refresh: bool) -> _Report:
    from papin.llm.config import LLMConfig, config_path
    from papin.llm.errors import ProviderError
    from papin.llm.hardware import detect_hardware
    from papin.llm.store.sources import DEFAULT_MODEL_ID

    problems: list[str] = []
    try:
        config = LLMConfig.load()
    except ProviderError as exc:
        problems.append(f"configuration: {one_line(str(exc))} (the defaults are shown)")
        config = LLMConfig()
    hardware = detect_hardware(refresh=refresh)
    name = model or state.model or config.default_model or DEFAULT_MODEL_ID
    report = _Report(config, str(config_path()), hardware, name, problems=problems)
    _model_part(report)
    _safety_part(report)
    _provider_part(report, state, refresh)
    _migration_part(report)
    return report


def _model_part(report: _Report) -> None:
    """The model's metadata, the load settings the embedded provider would use for it (the
    same :func:`~papin.llm.hardware.backend_settings.resolve_settings` call), and its fit."""
    from pathlib import Path

    from papin.llm.discovery.model_files import find_model_info
    from papin.llm.errors import ProviderError
    from papin.llm.factory import get_provider_factory
    from papin.llm.hardware.backend_settings import resolve_settings
    from papin.llm.hardware.fit import assess_fit
    from papin.llm.providers.llamacpp import LlamaCppConfig, user_load_settings

    try:
        config = get_provider_factory().make_config("llamacpp", report.config.settings_for("llamacpp"))
    except ProviderError as exc:
        report.problems.append(f"llamacpp settings: {one_line(str(exc))} (the defaults are shown)")
        config = LlamaCppConfig()
    assert isinstance(config, LlamaCppConfig)
    root = Path(config.models_dir).expanduser() if config.models_dir else None
    path: Path | None = None
    try:
        report.model_source, report.model_info = find_model_info(
            report.model, models_dir=root, model_dirs=report.config.discovery.model_dirs
        )
        path = Path(report.model_source) if Path(report.model_source).is_file() else None
    except ProviderError as exc:
        report.problems.append(f"model '{report.model}': {one_line(str(exc))}")
    hw = report.hardware
    report.tuned = resolve_settings(
        report.model_info,
        path,
        user_load_settings(config),
        optimize=config.optimize,
        gpu_offload=hw.llama.gpu_offload,
        hardware=hw,
    )
    if report.model_info is not None:
        report.fit = assess_fit(report.model_info, hw, context_size=config.context_size)


def _safety_part(report: _Report) -> None:
    """The crash-safety decisions: extra buffers for the embedded build (from the tuned
    settings), ``--no-repack`` for llama-server, and the crash probe's stored verdicts."""
    from papin.llm.errors import ProviderError
    from papin.llm.factory import get_provider_factory
    from papin.llm.hardware.backend_settings import server_flags, server_safety
    from papin.llm.hardware.tuning import extra_buffers_setting

    hw = report.hardware
    if report.tuned is not None:
        report.safety["embedded"] = {
            "extra_buffers": report.tuned.extra_buffers,
            "reason": report.tuned.reasons.get("extra_buffers", ""),
        }
    binary = hw.llama.server_binary
    if binary:
        mode = "auto"
        try:
            server = get_provider_factory().make_config(
                "llamacpp_server", report.config.settings_for("llamacpp_server")
            )
            mode = str(getattr(server, "extra_buffers", "auto"))
        except ProviderError as exc:
            report.problems.append(f"llamacpp_server settings: {one_line(str(exc))}")
        flags, why = server_safety(hw.cpu, extra_buffers_setting(mode), lambda: server_flags(binary), set())
        report.safety["llama_server"] = {"flags": list(flags), "reason": why}
    if report.model_info is not None and report.tuned is not None and hw.llama.package_version:
        from papin.llm.providers.llamacpp import probe_verdicts

        try:
            found = probe_verdicts(report.model_info.quantization, report.tuned.gpu_layers > 0)
        except Exception as exc:  # the report never fails on one part
            report.problems.append(f"crash probe verdicts: {type(exc).__name__}: {exc}")
            found = {}
        report.safety["probe"] = found


def _provider_part(report: _Report, state: CliState, refresh: bool) -> None:
    from papin.cli._common import open_manager
    from papin.llm.errors import ProviderError

    try:
        with open_manager(state) as llm:
            report.discovery = llm.discover(refresh=refresh)  # first: the choice reuses it
            try:
                llm.initialize()
            except ProviderError as exc:
                report.problems.append(f"provider: {one_line(str(exc))}")
            choice = llm.provider_choice
            if choice is not None:
                report.chosen, report.reason = choice.provider, choice.reason
                report.endpoint = choice.status.endpoint
    except ProviderError as exc:
        report.problems.append(f"provider: {one_line(str(exc))}")


def _migration_part(report: _Report) -> None:
    from papin.llm.errors import ProviderError
    from papin.llm.migration import migration_status

    try:
        state = migration_status()
    except ProviderError as exc:
        report.problems.append(f"legacy migration state: {one_line(str(exc))}")
        return
    report.migration = state.to_dict() if state is not None else None


# -- output ----------------------------------------------------------------------------------------


def _as_json(r: _Report) -> dict[str, Any]:
    return {
        "config": {
            "file": r.config_file,
            "schema_version": r.config.schema_version,
            "provider_type": r.config.provider_type,
            "default_model": r.config.default_model,
            "enable_optimizations": r.config.enable_optimizations,
            "auto_discover": r.config.auto_discover,
            "retry": r.config.retry.model_dump(),
        },
        "hardware": r.hardware.to_dict(),
        "model": {
            "name": r.model,
            "source": r.model_source,
            "info": r.model_info.to_dict() if r.model_info else None,
        },
        "optimizations": r.tuned.to_dict() if r.tuned else None,
        "safety": r.safety,
        "fit": r.fit.to_dict() if r.fit else None,
        "discovery": r.discovery.to_dict() if r.discovery else None,
        "provider": {"chosen": r.chosen, "endpoint": r.endpoint, "reason": r.reason},
        "legacy_migration": r.migration,
        "problems": r.problems,
    }


def _heading(text: str) -> None:
    get_console().print(f"\n[bold]{text}[/bold]")


def _rows(rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(f"  {key}", value)
    get_console().print(table)


def _print(r: _Report) -> None:
    _print_hardware(r.hardware)
    _print_tuning(r)
    if r.discovery is not None:
        from papin.cli.providers import print_discovery

        _heading("Discovery")
        print_discovery(r.discovery)
    _heading("Provider")
    if r.chosen:
        where = f" at {r.endpoint}" if r.endpoint and "://" in r.endpoint else ""
        click.echo(f"  Using {r.chosen}{where}: {r.reason}")
    else:
        click.echo("  No provider is usable (see the problems below).")
    _heading("Configuration")
    c = r.config
    _rows(
        [
            ("file", r.config_file),
            ("schema", str(c.schema_version)),
            ("provider", c.provider_type or "(choose automatically)"),
            ("default model", c.default_model or "(none)"),
            ("optimizations", "on" if c.enable_optimizations else "off"),
            ("legacy migration", _migration_text(r.migration)),
        ]
    )
    if r.problems:
        _heading("Problems")
        for problem in r.problems:
            click.echo(f"  - {problem}")


def _migration_text(state: dict[str, Any] | None) -> str:
    if state is None:
        return "never run (nothing legacy found, or not yet: 'papin config migrate --dry-run')"
    text = f"{state['status']} {state.get('timestamp') or ''}".strip()
    if state.get("reason"):
        text += f": {state['reason']}"
    return text


def _print_hardware(hw: HardwareInfo) -> None:
    _heading("Hardware")
    cpu, mem = hw.cpu, hw.memory
    cores = f"{cpu.physical_cores} physical, {cpu.logical_cores} logical"
    if cpu.usable_cores != cpu.physical_cores:
        cores += f", {cpu.usable_cores} usable by papin"
    memory = f"{human_bytes(mem.total)} total, {human_bytes(mem.available)} available"
    if mem.cgroup_limit is not None:
        memory += f"; container limit {human_bytes(mem.cgroup_limit)}"
    rows = [
        ("system", f"{hw.os} {hw.os_version or ''} ({hw.architecture})".replace("  ", " ")),
        ("CPU", cpu.model or "unknown"),
        ("cores", cores),
        ("SIMD", " ".join(sorted(cpu.features)) or "none detected"),
        ("memory", memory),
    ]
    for gpu in hw.gpus:
        vram = (
            f"{human_bytes(gpu.memory_free)} free of {human_bytes(gpu.memory_total)}"
            if gpu.memory_total
            else "memory unknown"
        )
        extra = ", ".join(
            x
            for x in (
                f"compute {gpu.compute_capability}" if gpu.compute_capability else "",
                f"driver {gpu.driver}" if gpu.driver else "",
                "unified memory" if gpu.unified_memory else "",
            )
            if x
        )
        rows.append(
            (f"GPU {gpu.index}", f"{gpu.name} ({gpu.vendor}): {vram}" + (f"; {extra}" if extra else ""))
        )
    if not hw.gpus:
        why = "; ".join(f"{p.name}: {p.reason}" for p in hw.probes if p.name in _GPU_PROBES and p.reason)
        rows.append(("GPU", "none detected" + (f" ({why})" if why else "")))
    llama = hw.llama
    if llama.package_version:
        offload = "GPU offload" if llama.gpu_offload else "CPU only (no GPU offload in this build)"
        rows.append(("llama-cpp-python", f"{llama.package_version}: {offload}"))
        if llama.features:
            rows.append(("llama.cpp features", " ".join(sorted(llama.features))))
    else:
        note = hw.probe("llama.cpp")
        rows.append(
            ("llama-cpp-python", f"not installed{f' ({note.reason})' if note and note.reason else ''}")
        )
    if llama.server_binary:
        backend = f" (backend: {llama.server_backend})" if llama.server_backend else ""
        rows.append(("llama-server", llama.server_binary + backend))
    _rows(rows)


_GPU_PROBES = ("nvidia", "amd", "apple", "gpu")


def _print_tuning(r: _Report) -> None:
    source = f" ({r.model_source})" if r.model_source else ""
    _heading(f"Settings for {r.model}{source}")
    if r.tuned is not None:
        state = (
            "on" if r.config.enable_optimizations else "off ('papin config set enable_optimizations true')"
        )
        click.echo(f"  optimisations: {state}")
        _rows([(line.setting, f"{line.value}: {line.reason}") for line in r.tuned.describe()])
    if r.fit is not None:
        from papin.cli.models import VERDICTS

        click.echo(f"  Fit: {VERDICTS[r.fit.verdict]}: {r.fit.summary}")
    _print_safety(r)


def _print_safety(r: _Report) -> None:
    rows: list[tuple[str, str]] = []
    server = r.safety.get("llama_server")
    if server is not None:
        flags = " ".join(server["flags"]) or "no safety flags"
        rows.append(("llama-server", f"{flags}: {server['reason']}"))
    probe = r.safety.get("probe")
    if probe is not None:
        seen = [f"{k}: {v}" for k, v in probe.items()]
        never = "not run yet for this model (it runs before the first load)"
        rows.append(("crash probe", "; ".join(seen) or never))
    if rows:
        _heading("Crash safety")
        _rows(rows)
