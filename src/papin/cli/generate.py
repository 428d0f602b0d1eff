"""``papin generate``: stream a completion to stdout; shared generation options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from papin.cli._common import (
    INTERRUPTED_EXIT_CODE,
    CliState,
    echo_json,
    human_bytes,
    open_manager,
    pass_state,
)

if TYPE_CHECKING:
    from papin.cli._progress import DownloadProgress
    from papin.llm.datatypes import GenerationResult
    from papin.llm.options import GenerationOptions

__all__ = [
    "auto_pull_progress",
    "build_options",
    "format_stats",
    "generate",
    "generation_options",
    "interrupted_pull_line",
]

F = TypeVar("F", bound=Callable[..., Any])

#: GenerationOptions field -> the flag that sets it (for error messages).
_FLAGS = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
    "stop": "--stop",
    "system": "--system",
}


def generation_options(func: F) -> F:
    """Add the sampling options shared by ``generate`` and ``chat`` to a command."""
    decorators = [
        click.option("--max-tokens", type=int, help="Stop after this many tokens."),
        click.option("--temperature", type=float, help="Sampling temperature (0 = greedy)."),
        click.option("--top-p", type=float, help="Nucleus sampling mass (0 < p <= 1)."),
        click.option("--top-k", type=int, help="Sample from the k most likely tokens."),
        click.option("--seed", type=int, help="Random seed, for reproducible output."),
        click.option(
            "--stop", multiple=True, metavar="TEXT", help="Stop sequence (repeatable)."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_options(
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: tuple[str, ...] = (),
    system: str | None = None,
) -> GenerationOptions | None:
    """Validate the flags into :class:`GenerationOptions` (``None`` when none is given).

    A bad value raises :class:`click.UsageError` naming the flag (exit status 2).
    """
    values: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": list(stop) or None,
        "system": system,
    }
    given = {key: value for key, value in values.items() if value is not None}
    if not given:
        return None
    from pydantic import ValidationError

    from papin.llm.options import GenerationOptions

    try:
        return GenerationOptions.model_validate(given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            problems.append(f"{_FLAGS.get(field, field)}: {err['msg']}")
        raise click.UsageError("Invalid option " + "; ".join(problems) + ".") from None


def auto_pull_progress(model: str) -> DownloadProgress:
    """The progress bar shown on stderr when a missing model is pulled automatically."""
    from papin.cli._progress import DownloadProgress

    return DownloadProgress(
        model, intro=f"Model '{model}' is not installed; pulling it first (auto_pull is on)."
    )


def format_stats(result: GenerationResult) -> str:
    """One line of generation statistics (for ``--stats``)."""
    s = result.stats
    parts = [f"model {result.model} ({result.provider})", f"finish {s.finish_reason}"]
    if s.prompt_tokens is not None:
        parts.append(f"prompt {s.prompt_tokens} tokens")
    if s.output_tokens is not None:
        parts.append(f"output {s.output_tokens} tokens")
    if s.tokens_per_second is not None:
        parts.append(f"{s.tokens_per_second:.1f} tokens/s")
    if s.time_to_first_token is not None:
        parts.append(f"first token {s.time_to_first_token:.2f}s")
    if s.load_time is not None:
        parts.append(f"load {s.load_time:.2f}s")
    if s.total_time is not None:
        parts.append(f"total {s.total_time:.2f}s")
    return "Stats: " + ", ".join(parts)


def interrupted_pull_line(bar: DownloadProgress) -> str:
    """What to say when Ctrl-C hits during an automatic pull."""
    last = bar.last
    done = f" after {human_bytes(last.bytes_downloaded)}" if last and last.bytes_downloaded else ""
    return f"Pull of '{bar.model}' interrupted{done}; the next run resumes it."


@click.command()
@click.argument("prompt")
@click.option("--model", "-m", metavar="NAME", help="Model to use (default: configured).")
@generation_options
@click.option("--system", metavar="TEXT", help="System prompt.")
@click.option("--stats", is_flag=True, help="Print generation statistics to stderr.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the whole result (text and stats) as JSON."
)
@pass_state
def generate(
    state: CliState,
    prompt: str,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: tuple[str, ...],
    system: str | None,
    stats: bool,
    as_json: bool,
) -> None:
    """Complete PROMPT, streaming the text to stdout.

    The text is printed as it arrives; PROMPT '-' reads the prompt from stdin.

    A missing model is pulled first when auto_pull is on. Ctrl-C stops generation: the text
    so far stays, and the exit status is 130.
    """
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("The prompt is empty.")
    options = build_options(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        system=system,
    )
    parts: list[str] = []
    out = sys.stdout

    with open_manager(state, model=model) as llm:
        name = llm.resolve_model(None)
        bar = auto_pull_progress(name)

        def on_text(text: str) -> None:
            bar.stop()  # an automatic pull, if any, is over once text arrives
            parts.append(text)
            if not as_json:
                out.write(text)
                out.flush()

        try:
            with bar:  # erased if the call fails or is interrupted during a pull
                result = llm.generate_text_streaming(
                    name, prompt, options, on_text, on_download=bar
                )
        except KeyboardInterrupt:
            _report_interrupt(parts, bar, as_json=as_json)
            if as_json:
                choice = llm.provider_choice
                provider = choice.provider if choice else (state.provider or "")
                echo_json(_partial_result(provider, name, parts))
            raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None

    if as_json:
        echo_json(result.to_dict())
    elif result.text and not result.text.endswith("\n"):
        out.write("\n")
        out.flush()
    if stats:
        click.echo(format_stats(result), err=True)


def _report_interrupt(parts: list[str], bar: DownloadProgress, *, as_json: bool) -> None:
    if not parts and bar.started:
        click.echo(interrupted_pull_line(bar), err=True)
        return
    if parts and not as_json and not parts[-1].endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    received = sum(len(p) for p in parts)
    click.echo(f"Generation interrupted ({received} characters received).", err=True)


def _partial_result(provider: str, model: str, parts: list[str]) -> dict[str, Any]:
    from papin.llm.datatypes import GenerationResult, GenerationStats

    result = GenerationResult(
        text="".join(parts),
        model=model,
        provider=provider,
        stats=GenerationStats(finish_reason="cancelled"),
    )
    return result.to_dict()

