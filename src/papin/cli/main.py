"""The ``papin`` command group: global options, error handling and the entry point.

Every :class:`~papin.llm.errors.ProviderError` becomes one ``Error: <message>`` line on stderr
and exit status 1; usage errors exit with 2; Ctrl-C exits with 130. ``--debug`` lets
exceptions through with their tracebacks instead.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import IO, Any

import click

from papin import __version__
from papin.cli._common import INTERRUPTED_EXIT_CODE, CliState, one_line
from papin.cli.chat import chat
from papin.cli.config import config_group
from papin.cli.doctor import doctor
from papin.cli.generate import generate
from papin.cli.models import models_group
from papin.cli.providers import providers
from papin.llm.errors import ProviderError

__all__ = ["OneLineUsageError", "PapinGroup", "ProviderFailure", "cli", "main"]


class ProviderFailure(click.ClickException):
    """A provider error shown as one line; exit status 1."""

    exit_code = 1


class OneLineUsageError(click.UsageError):
    """A usage error shown as a single ``Error: ...`` line; exit status 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the error (with a pointer to ``--help``) on one line."""
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {one_line(self.format_message())}{hint}", file=file, err=True)


#: Click's "no arguments, so show the help" signal (click >= 8.2), kept as it is.
_KEEP_AS_IS: tuple[type[click.UsageError], ...] = tuple(
    cls
    for cls in (getattr(click.exceptions, "NoArgsIsHelpError", None), OneLineUsageError)
    if isinstance(cls, type) and issubclass(cls, click.UsageError)
)


def _one_line_usage(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _KEEP_AS_IS):
        return exc
    return OneLineUsageError(exc.format_message(), ctx=exc.ctx)


def _debug(ctx: click.Context) -> bool:
    state = ctx.find_object(CliState)
    return bool(state and state.debug)


class PapinGroup(click.Group):
    """A click group that turns library errors and Ctrl-C into clean exits."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """Parse the global options; a usage error there is shown on one line."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; map ProviderError, KeyboardInterrupt and surprises to exit codes."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ProviderError as exc:
            if _debug(ctx):
                raise
            raise ProviderFailure(one_line(str(exc)) or type(exc).__name__) from exc
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE or _debug(ctx):
                raise  # click handles a closed stdout pipe quietly
            raise click.ClickException(one_line(str(exc))) from exc
        except Exception as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {one_line(str(exc))} "
                "(run 'papin --debug ...' to see the traceback)"
            ) from exc


def _check_provider(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from papin.llm.factory import get_provider_factory

    names = get_provider_factory().registered_providers()
    name = value.strip().lower()
    if name not in names:
        raise click.BadParameter(f"unknown provider {value!r}; registered: {', '.join(names)}.")
    return name


@click.group(
    cls=PapinGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Settings come from flags, then environment variables (PAPIN_PROVIDER, PAPIN_MODEL, "
        "PAPIN_ENDPOINT, OLLAMA_HOST, ...), then the config file ('papin config path'), "
        "then defaults."
    ),
)
@click.option(
    "--provider",
    metavar="NAME",
    callback=_check_provider,
    help="Provider to use ('ollama', 'llamacpp', ...); default: configured, else the first available.",
)
@click.option("--endpoint", metavar="URL", help="Server URL of the provider (e.g. :11434).")
@click.option("--model", "-m", metavar="NAME", help="Default model for this command.")
@click.option(
    "--debug",
    is_flag=True,
    envvar="PAPIN_DEBUG",
    help="Show full tracebacks instead of one-line errors.",
)
@click.version_option(__version__, "--version", "-V", prog_name="papin")
@click.pass_context
def cli(
    ctx: click.Context,
    provider: str | None,
    endpoint: str | None,
    model: str | None,
    debug: bool,
) -> None:
    """papin: one interface to local LLMs (Ollama, embedded llama.cpp, ...)."""
    ctx.obj = CliState(provider=provider, endpoint=endpoint, model=model, debug=debug)


cli.add_command(providers)
cli.add_command(models_group)
cli.add_command(generate)
cli.add_command(chat)
cli.add_command(config_group)
cli.add_command(doctor)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``papin`` command line (the console script's entry point)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="papin")
