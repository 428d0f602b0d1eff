"""``papin config ...``: show the effective configuration, change the file, find it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from papin.cli._common import CliState, echo_json, human_bytes, mask_secrets, pass_state

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig
    from papin.llm.migration import MigrationPlan, MigrationReport, MigrationState

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

        cfg = create_llm_manager(provider=state.provider, endpoint=state.endpoint, model=state.model).config
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


@config_group.command("migrate")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
@click.option(
    "--from",
    "legacy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="Migrate this legacy configuration file (.json, .toml, .yaml) instead of searching.",
)
@click.option("--overwrite", is_flag=True, help="Replace settings papin already has with the legacy values.")
@click.option("--status", "show_status", is_flag=True, help="Show the state of the last migration.")
@click.option("--opt-out", is_flag=True, help="Never migrate automatically at start.")
def migrate(
    dry_run: bool,
    as_json: bool,
    legacy_file: Path | None,
    overwrite: bool,
    show_status: bool,
    opt_out: bool,
) -> None:
    """Migrate the legacy Papin (mcp-client) LLM configuration and model files.

    Looks where the legacy app kept them, maps the settings onto papin's config file and
    registers GGUF model files in the model store in place (nothing is copied, and legacy
    files are never changed). A backup of the config file is written first; on any failure
    everything is restored. Running it again changes nothing.

    \b
    Examples:
      papin config migrate --dry-run
      papin config migrate --from ~/old/llm_config.toml
      papin config migrate --status
      papin config migrate --opt-out
    """
    import papin.llm.migration as migration

    if show_status or opt_out:
        state = migration.opt_out() if opt_out else migration.migration_status()
        if opt_out and not as_json:
            click.echo(
                f"Automatic migration turned off (recorded in {migration.state_path()}); "
                "'papin config migrate' still migrates when asked."
            )
        if as_json:
            echo_json(
                {"state_file": str(migration.state_path()), "state": state.to_dict() if state else None}
            )
        elif show_status:
            _print_state(state)
        return
    detection = migration.detect_legacy(legacy_file=legacy_file)
    if not detection.found:
        if as_json:
            echo_json({"status": "nothing_to_do", "summary": "No legacy configuration or model files found.",
                       "legacy": detection.to_dict()})  # fmt: skip
        else:
            click.echo(
                f"No legacy Papin configuration or model files found ({len(detection.searched)} places "
                "searched; --json lists them)."
            )
        return
    plan = migration.plan_migration(detection, overwrite=overwrite)
    report = migration.run_migration(plan, dry_run=dry_run)
    if as_json:
        echo_json(mask_secrets(report.to_dict()))
    else:
        _print_report(plan, report)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _value(value: Any) -> str:
    return json.dumps(mask_secrets({"v": value})["v"], ensure_ascii=False)


_HEADS = {"dry_run": ("Would change", "Would register"), "completed": ("Changed", "Registered")}


def _print_report(plan: MigrationPlan, report: MigrationReport) -> None:
    changed, registered = _HEADS.get(report.status, ("Planned changes", "Planned to register"))
    det = plan.detection
    if det.config_source:
        click.echo(f"Legacy configuration: {det.config_source} ({det.config_format})")
    if plan.changes:
        click.echo(f"{changed}:")
        for c in plan.changes:
            click.echo(f"  {c.key}: {_value(c.old)} -> {_value(c.new)}  (from legacy {c.source})")
    if plan.to_register:
        click.echo(f"{registered} in the model store {plan.store_root} (in place, not copied):")
        for m in plan.to_register:
            click.echo(f"  {m.model_id}: {m.path} ({human_bytes(m.size_bytes)})")
    for m in plan.models:
        if m.action == "already_registered":
            click.echo(f"Already registered: {m.model_id}: {m.path}")
    for c in plan.unchanged:
        click.echo(f"Already set: {c.key} = {_value(c.new)}  (from legacy {c.source})")
    if plan.skipped:
        click.echo("Not migrated:")
        for item in plan.skipped:
            click.echo(f"  {item.item}: {item.reason}")
    if report.status == "failed":
        click.echo(f"Error: {report.summary()}", err=True)
        return
    click.echo(report.summary())
    if report.status == "dry_run" and not plan.nothing_to_do:
        click.echo("Nothing was written (dry run). Run 'papin config migrate' to apply.")


def _print_state(state: MigrationState | None) -> None:
    from papin.llm.migration import state_path

    if state is None:
        click.echo(f"No migration has run yet ({state_path()} does not exist).")
        return
    click.echo(f"Migration {state.status} at {state.timestamp} (state in {state_path()}).")
    if state.legacy_source:
        click.echo(f"Legacy configuration: {state.legacy_source}")
    if state.config_changes:
        click.echo(f"Settings changed: {', '.join(state.config_changes)}")
    if state.models:
        click.echo(f"Models registered: {', '.join(state.models)}")
    if state.backup_path:
        click.echo(f"Backup: {state.backup_path}")
    if state.reason:
        click.echo(f"Reason: {state.reason}")


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
