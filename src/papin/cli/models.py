"""``papin models ...``: list, pull, remove, inspect, load and unload models."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from papin.cli._common import (
    INTERRUPTED_EXIT_CODE,
    CliState,
    echo_json,
    get_console,
    human_bytes,
    open_manager,
    pass_state,
    short_time,
)

if TYPE_CHECKING:
    from rich.table import Table

    from papin.llm.datatypes import DownloadStatus
    from papin.llm.hardware import HardwareInfo
    from papin.llm.hardware.fit import FitReport

__all__ = ["models_group"]

_JSON_HELP = "Print machine-readable JSON."


def _table(*columns: str) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


@click.group("models")
def models_group() -> None:
    """Manage the models of the active provider."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@pass_state
def list_models(state: CliState, as_json: bool) -> None:
    """List installed models (size, family, parameters...)."""
    with open_manager(state) as llm:
        models = llm.list_downloaded_models()
    if as_json:
        echo_json([m.to_dict() for m in models])
        return
    if not models:
        click.echo("No models installed. Pull one with 'papin models pull NAME'.", err=True)
        return
    table = _table("NAME", "SIZE", "FAMILY", "PARAMS", "QUANTIZATION", "MODIFIED")
    for m in models:
        table.add_row(
            m.name,
            human_bytes(m.size_bytes),
            m.family or "-",
            m.parameter_size or "-",
            m.quantization or "-",
            short_time(m.modified_at),
        )
    get_console().print(table)


def _interrupted_line(name: str, last: DownloadStatus | None) -> str:
    where = ""
    if last is not None and last.bytes_downloaded:
        pct = f"{last.progress:.0%}, " if last.progress is not None else ""
        total = f" of {human_bytes(last.total_bytes)}" if last.total_bytes else ""
        where = f" at {pct}{human_bytes(last.bytes_downloaded)}{total}"
    return f"Pull of '{name}' interrupted{where}; run the same command to resume."


@models_group.command("pull")
@click.argument("name")
@pass_state
def pull(state: CliState, name: str) -> None:
    """Download model NAME, showing progress.

    A live progress bar (bytes, speed, ETA) is drawn on stderr.

    Ctrl-C stops the download (exit status 130); pulling again resumes it.
    """
    from papin.cli._progress import DownloadProgress

    bar = DownloadProgress(name)
    with open_manager(state) as llm:
        try:
            with bar:  # the bar stays after success, and is erased after an error or Ctrl-C
                final = llm.download_model(name, bar)
        except KeyboardInterrupt:
            click.echo(_interrupted_line(name, bar.last), err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
    size = f" ({human_bytes(final.total_bytes)})" if final.total_bytes else ""
    click.echo(f"Pulled {name}{size}.")


@models_group.command("rm")
@click.argument("name")
@pass_state
def remove(state: CliState, name: str) -> None:
    """Delete the installed model NAME."""
    with open_manager(state) as llm:
        llm.delete_model(name)
    click.echo(f"Deleted {name}.")


@models_group.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@pass_state
def info(state: CliState, name: str, as_json: bool) -> None:
    """Show details of model NAME (size, context, family...)."""
    with open_manager(state) as llm:
        model = llm.get_model_info(name)
    if as_json:
        echo_json(model.to_dict())
        return
    rows: list[tuple[str, str]] = [
        ("name", model.name),
        ("id", model.id),
        ("provider", model.provider),
        ("installed", "yes" if model.installed else "no"),
        ("size", human_bytes(model.size_bytes)),
        ("context", str(model.context_size) if model.context_size else "-"),
        ("family", model.family or "-"),
        ("parameter size", model.parameter_size or "-"),
        ("quantization", model.quantization or "-"),
        ("format", model.format or "-"),
        ("capabilities", ", ".join(model.capabilities) or "-"),
        ("modified", short_time(model.modified_at)),
        ("digest", model.digest or "-"),
    ]
    if model.description:
        rows.append(("description", model.description))
    rows.extend((key, value) for key, value in sorted(model.metadata.items()))
    table = _table("FIELD", "VALUE")
    table.show_header = False
    for key, value in rows:
        table.add_row(key, value)
    get_console().print(table)


@models_group.command("load")
@click.argument("name")
@pass_state
def load(state: CliState, name: str) -> None:
    """Load model NAME into memory so the next request starts fast."""
    with open_manager(state) as llm:
        started = time.perf_counter()
        llm.load_model(name)
        elapsed = time.perf_counter() - started
    click.echo(f"Loaded {name} ({elapsed:.1f}s).")


@models_group.command("unload")
@click.argument("name")
@pass_state
def unload(state: CliState, name: str) -> None:
    """Free the memory model NAME uses."""
    with open_manager(state) as llm:
        llm.unload_model(name)
    click.echo(f"Unloaded {name}.")


@models_group.command("ps")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@pass_state
def ps(state: CliState, as_json: bool) -> None:
    """List models loaded in memory now."""
    with open_manager(state) as llm:
        loaded = llm.list_loaded_models()
    if as_json:
        echo_json([m.to_dict() for m in loaded])
        return
    if not loaded:
        click.echo("No models are loaded.", err=True)
        return
    table = _table("NAME", "SIZE", "VRAM", "CONTEXT", "UNTIL")
    for m in loaded:
        table.add_row(
            m.id,
            human_bytes(m.size_bytes),
            human_bytes(m.size_vram_bytes),
            str(m.context_size) if m.context_size else "-",
            short_time(m.expires_at),
        )
    get_console().print(table)


@models_group.command("fit")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option(
    "--context",
    "context",
    type=click.IntRange(min=1),
    help="Context size in tokens (default: trained, up to 8192).",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def fit(models: tuple[str, ...], context: int | None, as_json: bool) -> None:
    """Say whether MODEL fits this machine: on the GPU, partly offloaded, CPU only, or not.

    MODEL is the path of a .gguf file, a model id in papin's model store, or the name of a
    model file found on disk ('llama3.2:1b' in Ollama's store, 'OWNER/REPO/FILE.gguf' in the
    Hugging Face cache; 'papin providers' lists them). Several MODELs (quantizations of one
    model) are compared and the best one that fits is named.
    """
    from pathlib import Path

    from papin.llm.config import LLMConfig
    from papin.llm.discovery.model_files import find_model_info
    from papin.llm.hardware import detect_hardware
    from papin.llm.hardware.fit import assess_fit, best_fit

    config = LLMConfig.load()
    models_dir = config.settings_for("llamacpp").get("models_dir")
    root = Path(str(models_dir)).expanduser() if models_dir else None
    found = [find_model_info(m, models_dir=root, model_dirs=config.discovery.model_dirs) for m in models]
    hardware = detect_hardware(include_llama=False)
    if hardware.has_gpu:
        hardware = detect_hardware()  # notes whether llama-cpp-python can use the GPU
    infos = [info for _, info in found]
    best = best_fit(infos, hardware, context_size=context) if len(infos) > 1 else None
    reports = list(best.reports) if best else [assess_fit(infos[0], hardware, context_size=context)]
    if as_json:
        echo_json(
            {
                "hardware": _hardware_summary(hardware),
                "models": [
                    {"source": src, **r.to_dict()} for (src, _), r in zip(found, reports, strict=True)
                ],
                "best": None
                if best is None
                else {
                    "source": found[best.index][0] if best.index is not None else None,
                    "reason": best.reason,
                },
            }
        )
        return
    console = get_console()
    console.print(_hardware_line(hardware))
    for (source, _), report in zip(found, reports, strict=True):
        _print_fit(source, report, several=len(found) > 1)
    if best is not None:
        choice = found[best.index][0] if best.index is not None else None
        click.echo(f"\nBest: {choice} ({best.reason})." if choice else f"\nNone fits: {best.reason}.")


#: How a fit verdict reads (``papin models fit``, ``papin doctor``).
VERDICTS = {
    "gpu": "fits on the GPU",
    "partial": "fits with partial GPU offload",
    "cpu": "fits on the CPU only",
    "no_fit": "does not fit",
}


def _hardware_summary(hardware: HardwareInfo) -> dict[str, object]:
    return {
        "cpu": hardware.cpu.model,
        "usable_cores": hardware.cpu.usable_cores,
        "ram_available": hardware.memory.usable_available,
        "ram_total": hardware.memory.usable_total,
        "gpus": [
            {"name": g.name, "memory_total": g.memory_total, "memory_free": g.memory_free}
            for g in hardware.usable_gpus
        ],
        "vram_free": hardware.free_vram,
    }


def _hardware_line(hardware: HardwareInfo) -> str:
    gpus = ", ".join(
        f"{g.name} ({human_bytes(g.memory_free)} free of {human_bytes(g.memory_total)})"
        for g in hardware.usable_gpus
    )
    memory = hardware.memory
    ram = f"{human_bytes(memory.usable_available)} RAM available of {human_bytes(memory.usable_total)}"
    return f"This machine: {hardware.cpu.model or 'CPU'}, {ram}; " + (
        f"GPU: {gpus}" if gpus else "no usable GPU"
    )


def _print_fit(source: str, report: FitReport, *, several: bool) -> None:
    click.echo(f"\n{source}: {report.model}: {VERDICTS[report.verdict].upper()}")
    click.echo(f"  {report.summary}")
    table = _table("", "")
    table.show_header = False
    rows = [
        ("weights", human_bytes(report.weights_bytes)),
        ("KV cache", f"{human_bytes(report.kv_bytes)} at {report.context_size} tokens"),
        ("compute buffer", human_bytes(report.compute_bytes)),
        ("layers on GPU", f"{report.gpu_layers} of {report.layers}"),
        ("needs in RAM", human_bytes(report.ram_bytes)),
        ("needs in VRAM", human_bytes(report.gpu_bytes)),
    ]
    if report.missing_bytes:
        rows.append(("missing", human_bytes(report.missing_bytes)))
    for key, value in rows:
        table.add_row("  " + key, value)
    get_console().print(table)
    for note in report.notes:
        click.echo(f"  note: {note}")
