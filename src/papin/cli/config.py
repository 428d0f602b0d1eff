"""``papin config ...``: show the effective configuration, change the file, find it."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from papin.cli._common import CliState, echo_json, mask_secrets, pass_state

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig

__all__ = ["config_group", "parse_value"]

#: Top-level settings and the environment variables that override them.
_ENV_OVERRIDES = {
    "provider_type": ("PAPIN_PROVIDER",),
    "default_model": ("PAPIN_MODEL",),
    "auto_pull": ("PAPIN_AUTO_PULL",),
    "auto_discover": ("PAPIN_AUTO_DISCOVER",),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """A ``config set`` value: JSON when it parses as JSON, otherwise the string itself.

    >>> parse_value("true"), parse_value("60"), parse_value("llama3.2"), parse_value('"7"')
    (True, 60, 'llama3.2', '7')
    >>> parse_value("NaN")
    'NaN'
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


@click.group("config")
def config_group() -> None:
    """Show and change papin's configuration file."""


@config_group.command("show")
@click.option(
    "--file",
    "file_only",
    is_flag=True,
    help="Show only the config file's contents, without environment variables and flags.",
)
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry; output is JSON.")
@pass_state
def show(state: CliState, file_only: bool, as_json: bool) -> None:
    """Print the effective configuration as JSON (flags > environment > file > defaults).

    API keys, tokens and Authorization headers are masked.
    """
    from papin.llm.config import LLMConfig

    if file_only:
        cfg = LLMConfig.from_file()
    else:
        from papin.llm.manager import create_llm_manager

        cfg = create_llm_manager(
            provider=state.provider, endpoint=state.endpoint, model=state.model
        ).config
    echo_json(mask_secrets(cfg.model_dump(mode="json")))


@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
def set_(key: str, value: str) -> None:
    """Set KEY (dotted, e.g. providers.ollama.endpoint) to VALUE in the config file.

    VALUE is read as JSON when it parses (true, 60, null, ["a"]), else as a string.
    Environment variables and flags are not written to the file.

    \b
    Examples:
      papin config set default_model llama3.2
      papin config set auto_pull false
      papin config set providers.ollama.endpoint http://127.0.0.1:11434
    """
    from papin.llm.config import LLMConfig

    parsed = parse_value(value)
    cfg = LLMConfig.from_file().set_value(key, parsed)
    _check_provider_settings(cfg)
    path = cfg.save()
    shown = mask_secrets({key.split(".")[-1]: parsed})[key.split(".")[-1]]
    click.echo(f"Set {key} = {json.dumps(shown, ensure_ascii=False)} in {path}")
    for note in _notes(cfg, key):
        click.echo(f"Note: {note}", err=True)


@config_group.command("path")
def path() -> None:
    """Print where the config file is (it may not exist yet)."""
    from papin.llm.config import config_path

    click.echo(str(config_path()))


def _check_provider_settings(cfg: LLMConfig) -> None:
    """Validate every provider section with its provider's own settings class, so a bad value
    (a negative timeout, an ftp:// endpoint) is refused before it reaches the file."""
    from papin.llm.factory import get_provider_factory

    factory = get_provider_factory()
    registered = set(factory.registered_providers())
    names = [n for n in (cfg.provider_type, *cfg.providers) if n]
    for name in dict.fromkeys(names):
        if name in registered:
            factory.make_config(name, cfg.settings_for(name))


def _notes(cfg: LLMConfig, key: str) -> list[str]:
    notes: list[str] = []
    top = key.split(".", 1)[0]
    if top == "provider_config" and cfg.provider_type is None:
        notes.append(
            "provider_config applies to provider_type, which is not set; set it too "
            "('papin config set provider_type ollama') or use providers.NAME.KEY instead."
        )
    variables = list(_ENV_OVERRIDES.get(top, ()))
    if key.endswith(".endpoint"):
        variables += ["PAPIN_ENDPOINT", "OLLAMA_HOST"]
    for var in variables:
        if os.environ.get(var):
            notes.append(f"{var} is set in the environment and overrides the file.")
    return notes
