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

    from papin.llm.types import DownloadStatus

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

