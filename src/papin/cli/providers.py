"""``papin providers``: registered providers, their health, and which one is used and why."""

from __future__ import annotations

from typing import Any

import click

from papin.cli._common import CliState, echo_json, get_console, one_line, pass_state
from papin.llm.errors import ProviderError

__all__ = ["providers"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_state
def providers(state: CliState, as_json: bool) -> None:
    """Show providers, their health, and which is used and why.

    Lists every registered provider with its version and endpoint, or the reason it is
    unavailable, and says which one papin chooses and why.

    Exits with 0 even when no provider is available: the output says why each is not.
    """
    from papin.cli._common import open_manager

    with open_manager(state) as llm:
        statuses = llm.get_available_providers()
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

    if as_json:
        entries: list[dict[str, Any]] = [
            {**status.to_dict(), "chosen": name == chosen} for name, status in statuses.items()
        ]
        echo_json(
            {
                "configured": configured,
                "chosen": chosen,
                "reason": reason,
                "error": error,
                "providers": entries,
            }
        )
        return

    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("", "PROVIDER", "STATUS", "VERSION", "ENDPOINT"):
        table.add_column(column, no_wrap=column != "ENDPOINT", overflow="fold")
    for name, status in statuses.items():
        table.add_row(
            "*" if name == chosen else "",
            name,
            Text("available", style="green")
            if status.available
            else Text("unavailable", style="red"),
            status.version or "-",
            status.endpoint or "-",
        )
    get_console().print(table)
    for name, status in statuses.items():
        if not status.available:
            click.echo(f"{name}: {one_line(status.error or 'unavailable')}")
    click.echo(f"Configured provider: {configured or '(none: choose automatically)'}")
    if chosen is not None:
        click.echo(f"Using {chosen}: {reason}")
    else:
        click.echo(f"No provider is usable: {error}")
