"""``papin providers``: registered providers, what discovery finds, which provider is used and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from papin.cli._common import CliState, echo_json, get_console, human_bytes, one_line, pass_state
from papin.llm.errors import ProviderError

if TYPE_CHECKING:
    from papin.llm.discovery import DiscoveryResult

__all__ = ["providers"]

#: Model files listed in the text output (``--json`` lists all).
_FILES_SHOWN = 20


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--refresh", is_flag=True, help="Probe again instead of using a result seconds old.")
@pass_state
def providers(state: CliState, as_json: bool, refresh: bool) -> None:
    """Show providers, what runs on this machine, and which provider is used and why.

    Lists every registered provider with its version and endpoint (or why it is unavailable);
    the LLM servers found running (type, address, version, health, models), backends installed
    but not running (executables, Python packages), the GGUF model files on disk that papin
    can run in place, and the provider papin chooses, with the reason.

    Exits with 0 even when no provider is available: the output says why each is not.
    """
    from papin.cli._common import open_manager

    with open_manager(state) as llm:
        found = llm.discover(refresh=refresh)  # first: the choice and the table reuse this result
        statuses = llm.provider_statuses(found)
        chosen: str | None = None
        reason: str | None = None
        error: str | None = None
        try:
            llm.initialize()
        except ProviderError as exc:
            error = one_line(str(exc))
        choice = llm.provider_choice
        if choice is not None:
            chosen, reason = choice.provider, choice.reason
        configured = llm.manager.config.provider_type
    if choice is not None and chosen in statuses:
        statuses[choice.provider] = choice.status  # where it is used (discovery may have moved it)

    if as_json:
        entries: list[dict[str, Any]] = [
            {**status.to_dict(), "chosen": name == chosen} for name, status in statuses.items()
        ]
        echo_json(
            {
                "configured": configured,
                "chosen": chosen,
                "endpoint": choice.status.endpoint if choice is not None else None,
                "reason": reason,
                "error": error,
                "providers": entries,
                "discovery": found.to_dict(),
            }
        )
        return

    from rich.table import Table
    from rich.text import Text

    console = get_console()
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("", "PROVIDER", "STATUS", "VERSION", "ENDPOINT"):
        table.add_column(column, no_wrap=column != "ENDPOINT", overflow="fold")
    for name, status in statuses.items():
        table.add_row(
            "*" if name == chosen else "",
            name,
            Text("available", style="green") if status.available else Text("unavailable", style="red"),
            status.version or "-",
            status.endpoint or "-",
        )
    console.print(table)
    for name, status in statuses.items():
        for key, value in status.details.items():
            if key.startswith("replica "):  # several endpoints: each one's health and breaker
                click.echo(f"{name} {key}: {value}")
        if not status.available:
            click.echo(f"{name}: {one_line(status.error or 'unavailable')}")
    print_discovery(found)
    click.echo(f"Configured provider: {configured or '(none: choose automatically)'}")
    if chosen is not None:
        click.echo(f"Using {chosen}: {reason}")
    else:
        click.echo(f"No provider is usable: {error}")


def _models_text(models: tuple[str, ...], limit: int = 3) -> str:
    if not models:
        return "0"
    shown = ", ".join(models[:limit]) + (", ..." if len(models) > limit else "")
    return f"{len(models)} ({shown})"


def print_discovery(found: DiscoveryResult) -> None:
    from rich.table import Table
    from rich.text import Text

    console = get_console()
    took = found.seconds.get("servers", 0.0) * 1000
    probed = f"{len(found.probed)} address{'es' if len(found.probed) != 1 else ''}"
    click.echo("")
    if found.backends:
        click.echo(f"Running LLM servers (probed {probed} in {took:.0f} ms):")
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("  TYPE", "ADDRESS", "VERSION", "HEALTH", "MODELS"):
            table.add_column(column, overflow="fold", no_wrap=column not in ("MODELS", "HEALTH"))
        styles = {"ready": "green", "loading": "yellow", "error": "red"}
        for b in found.backends:
            health = b.health + (f": {b.reason}" if b.reason else "")
            gpu = {True: " (GPU)", False: " (CPU)", None: ""}[b.accelerated]
            table.add_row(
                f"  {b.provider}",
                b.address,
                b.version or "-",
                Text(health + gpu, style=styles.get(b.health, "")),
                _models_text(b.models),
            )
        console.print(table)
    else:
        click.echo(f"Running LLM servers: none found (probed {probed} in {took:.0f} ms).")

    installed = [f"{e.name} {e.version or '(version unknown)'} ({e.path})" for e in found.executables]
    installed += [
        f"{p.distribution} {p.version or ''} (Python package)".replace("  ", " ") for p in found.packages
    ]
    click.echo("Installed backends: " + ("; ".join(installed) if installed else "none found"))

    files = found.model_files
    usable = [f for f in files if f.usable]
    click.echo(
        f"Model files on disk: {len(usable)} usable"
        + (f", {len(files) - len(usable)} not" if len(usable) < len(files) else "")
    )
    if files:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("  NAME", "SOURCE", "SIZE", "QUANT", "ARCH", "PATH"):
            table.add_column(column, overflow="fold", no_wrap=column not in ("PATH", "  NAME"))
        for f in files[:_FILES_SHOWN]:
            info = f.info
            table.add_row(
                f"  {f.name}",
                f.source,
                human_bytes(f.size_bytes),
                (info.quantization if info else None) or "-",
                (info.architecture if info else None) or Text(one_line(f.error or "unusable"), style="red"),
                str(f.path),
            )
        console.print(table)
        if len(files) > _FILES_SHOWN:
            click.echo(f"  ... and {len(files) - _FILES_SHOWN} more ('papin providers --json' lists all).")
        example = usable[0].name if usable else "NAME"
        click.echo(
            f"  Run one in place by name: papin --provider llamacpp --model {example} generate 'Hello'"
        )
    click.echo("")
