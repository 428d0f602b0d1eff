"""``papin chat``: an interactive conversation that keeps its history and streams replies."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from papin.cli._common import (
    INTERRUPTED_EXIT_CODE,
    CliState,
    one_line,
    open_manager,
    pass_state,
)
from papin.cli.generate import (
    auto_pull_progress,
    build_options,
    generation_options,
    interrupted_pull_line,
)
from papin.llm.errors import ProviderError

if TYPE_CHECKING:
    from papin.llm.datatypes import ChatMessage
    from papin.llm.options import GenerationOptions
    from papin.llm.sync import SyncLLMManager

__all__ = ["chat"]

PROMPT = ">>> "
_EXIT_COMMANDS = {"/exit", "/quit", "/bye"}
_HELP = (
    "Commands: /exit (or /quit, /bye, Ctrl-D) quits; /clear forgets the conversation; "
    "/help shows this. Ctrl-C stops a reply; at the prompt it quits."
)


def _read_line(interactive: bool) -> str | None:
    """The next line typed (``None`` at end of input)."""
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # pragma: no cover - platform without readline
            pass
        try:
            return input(PROMPT)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


@click.command()
@click.option("--model", "-m", metavar="NAME", help="Model to talk to (default: configured).")
@click.option("--system", metavar="TEXT", help="System message that starts the conversation.")
@generation_options
@pass_state
def chat(
    state: CliState,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: tuple[str, ...],
) -> None:
    """Chat with a model, streaming each reply.

    Each line you type is sent with the conversation so far.

    /exit or end of input (Ctrl-D) quits; /clear starts over. Ctrl-C during a reply stops
    that reply only; Ctrl-C at the prompt quits (exit status 130). When stdin is not a
    terminal, lines are read without a prompt and any error ends the session.
    """
    from papin.llm.datatypes import ChatMessage

    options = build_options(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        stop=stop,
    )
    interactive = sys.stdin.isatty()
    start: list[ChatMessage] = [ChatMessage("system", system)] if system else []
    history = list(start)

    with open_manager(state, model=model) as llm:
        llm.initialize()  # fail fast (one line, exit 1) if no provider answers
        name = llm.resolve_model(None)
        if interactive:
            click.echo(
                f"Chatting with {name} ({llm.current_provider.name}). "
                "Type /help for commands, /exit or Ctrl-D to quit.",
                err=True,
            )
        while True:
            try:
                line = _read_line(interactive)
            except KeyboardInterrupt:
                click.echo()
                raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
            if line is None:
                if interactive:
                    click.echo()
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command = text.split()[0].lower()
                if command in _EXIT_COMMANDS:
                    break
                if command == "/clear":
                    history = list(start)
                    click.echo("Conversation cleared.", err=True)
                elif command == "/help":
                    click.echo(_HELP, err=True)
                else:
                    click.echo(f"Unknown command {command}. {_HELP}", err=True)
                continue
            history.append(ChatMessage("user", line))
            reply = _reply(llm, name, history, options, interactive=interactive)
            if reply is None:
                history.pop()  # nothing was answered: forget the question too
            else:
                history.append(ChatMessage("assistant", reply))


def _reply(
    llm: SyncLLMManager,
    model: str,
    history: list[ChatMessage],
    options: GenerationOptions | None,
    *,
    interactive: bool,
) -> str | None:
    """Stream one reply to stdout; returns its text (partial after Ctrl-C), or ``None`` when
    nothing was received. Errors end a non-interactive session; interactively they are shown
    and the conversation goes on."""
    parts: list[str] = []
    bar = auto_pull_progress(model)
    out = sys.stdout

    def on_text(text: str) -> None:
        bar.stop()
        parts.append(text)
        out.write(text)
        out.flush()

    try:
        with bar:  # erased if the call fails or is interrupted during a pull
            llm.chat(model, history, options, callback=on_text, on_download=bar)
    except KeyboardInterrupt:
        if parts:
            out.write("\n")
            out.flush()
            click.echo("(reply interrupted)", err=True)
        elif bar.started:
            click.echo(interrupted_pull_line(bar), err=True)
        else:
            click.echo("(interrupted)", err=True)
        return "".join(parts) or None
    except ProviderError as exc:
        if not interactive:
            raise
        if parts:
            out.write("\n")
        click.echo(f"Error: {one_line(str(exc))}", err=True)
        return "".join(parts) or None
    reply = "".join(parts)
    if not reply.endswith("\n"):
        out.write("\n")
        out.flush()
    return reply
