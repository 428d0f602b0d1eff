"""Which llama.cpp load settings are safe on which CPU and build (issue: AMX crashes), decided
on injected CPU and build profiles, so that these tests mean the same on every machine."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from papin.llm import ConfigurationError, LLMConfig
from papin.llm.factory import get_provider_factory
from papin.llm.hardware import reset_hardware_cache
from papin.llm.hardware.backend_settings import resolve_settings, server_launch, server_safety
from papin.llm.hardware.cpu import cpu_from_proc_cpuinfo
from papin.llm.hardware.tuning import choose_extra_buffers, plain_settings, tune
from tests.hwprofiles import (
    AVX2_BUILD_INFO,
    epyc_avx512,
    gemma_like,
    hardware,
    sapphire_rapids,
    use_hardware,
    workstation_8gb_gpu,
)
from tests.llm.hardware.test_tuning import fake_help_binary, stored

pytestmark = pytest.mark.timeout(60)

AMX_CPUINFO = (
    "processor : 0\nvendor_id : GenuineIntel\nmodel name : Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
    "flags : fpu sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512bw avx512vl "
    "avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8\n"
)
REPACK_HELP = (
    "--repack, -nr, --no-repack  whether to enable weight repacking\n-t, --threads N\n-c, --ctx-size N\n"
)


@pytest.fixture(autouse=True)
def fresh_hardware_cache() -> Iterator[None]:
    reset_hardware_cache()
    yield
    reset_hardware_cache()


def test_amx_flags_are_read_from_proc_cpuinfo() -> None:
    model, features = cpu_from_proc_cpuinfo(AMX_CPUINFO)
    assert model and "8481C" in model
    assert {"amx", "amx_int8", "amx_bf16", "avx512f"} <= features


def test_the_rule_on_each_profile() -> None:
    amx = sapphire_rapids()
    extra, why = choose_extra_buffers(amx.cpu, amx.llama.features)
    assert extra is False and "AMX" in why and "amx_int8" in why and "20824" in why
    # the same CPU with a build that has no AMX kernels: safe
    generic = sapphire_rapids(AVX2_BUILD_INFO)
    assert choose_extra_buffers(generic.cpu, generic.llama.features)[0] is True
    # a build whose features are unknown (a llama-server binary): assume the worst on AMX
    extra, why = choose_extra_buffers(amx.cpu, None)
    assert extra is False and "unknown" in why
    # no AMX: unchanged (fast) everywhere else
    for hw in (
        epyc_avx512(),
        workstation_8gb_gpu(),
        hardware(arch="arm64", cpu_features=frozenset({"neon"})),
    ):
        extra, why = choose_extra_buffers(hw.cpu, hw.llama.features)
        assert extra is True and "no AMX" in why


def test_tuned_settings_carry_the_decision_and_its_reason() -> None:
    tuned = tune(sapphire_rapids(), gemma_like())
    assert tuned.extra_buffers is False
    line = {line.setting: line for line in tuned.describe()}["extra_buffers"]
    assert line.value is False and "AMX" in line.reason
    assert tuned.to_dict()["extra_buffers"]["value"] is False
    assert tune(epyc_avx512(), gemma_like()).extra_buffers is True
    assert tune(sapphire_rapids(), None).extra_buffers is False  # without a model too
    # optimisations off still makes the safety decision
    assert plain_settings(gemma_like(), sapphire_rapids()).extra_buffers is False
    assert plain_settings(gemma_like(), epyc_avx512()).extra_buffers is True
    off = resolve_settings(gemma_like(), None, {}, optimize=False, hardware=sapphire_rapids())
    assert off.extra_buffers is False and "AMX" in off.reasons["extra_buffers"]


def test_the_user_setting_overrides_the_decision() -> None:
    forced = resolve_settings(
        gemma_like(), None, {"extra_buffers": True}, optimize=True, hardware=sapphire_rapids()
    )
    assert forced.extra_buffers is True and forced.reasons["extra_buffers"] == "set by the user"
    forced = resolve_settings(
        gemma_like(), None, {"extra_buffers": False}, optimize=True, hardware=epyc_avx512()
    )
    assert forced.extra_buffers is False and forced.reasons["extra_buffers"] == "set by the user"


@pytest.mark.parametrize("provider_type", ["llamacpp", "llamacpp_server"])
def test_extra_buffers_setting_as_written(provider_type: str) -> None:
    factory = get_provider_factory()
    for value, expected in (
        ("on", "on"),
        ("off", "off"),
        ("auto", "auto"),
        (True, "on"),
        (False, "off"),
        ("OFF", "off"),
    ):
        config = LLMConfig(provider_type=provider_type, provider_config={"extra_buffers": value})
        provider = factory.create_provider(config.provider_type, config.settings_for(provider_type))
        assert provider.config.extra_buffers == expected  # type: ignore[attr-defined]
    default = factory.create_provider(provider_type, {})
    assert default.config.extra_buffers == "auto"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="extra_buffers"):
        factory.create_provider(provider_type, {"extra_buffers": "sometimes"})


def test_embedded_load_settings_follow_the_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider

    model = stored(gemma_like(), tmp_path / "m.gguf")
    use_hardware(monkeypatch, sapphire_rapids())
    for optimize in (True, False):
        provider = LlamaCppProvider(
            LlamaCppConfig(models_dir=str(tmp_path), optimize=optimize, crash_probe=False)
        )
        assert provider._load_settings(model, None).extra_buffers is False
    provider = LlamaCppProvider(
        LlamaCppConfig(models_dir=str(tmp_path), extra_buffers="on", crash_probe=False)
    )
    assert provider._load_settings(model, None).extra_buffers is True
    use_hardware(monkeypatch, epyc_avx512())
    provider = LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path), crash_probe=False))
    assert provider._load_settings(model, None).extra_buffers is True
    provider = LlamaCppProvider(
        LlamaCppConfig(models_dir=str(tmp_path), extra_buffers="off", crash_probe=False)
    )
    assert provider._load_settings(model, None).extra_buffers is False


def test_managed_server_gets_no_repack_on_amx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.providers._llama.server_process import spec_for_model

    binary = fake_help_binary(tmp_path, REPACK_HELP)
    model = stored(gemma_like(), tmp_path / "m.gguf")
    use_hardware(monkeypatch, sapphire_rapids())
    assert "--no-repack" in spec_for_model(model, binary=binary).command(9000)
    assert "--no-repack" in spec_for_model(model, binary=binary, optimize=False).command(9000)
    # forced on, or chosen by the user in extra_args: left alone
    assert "--no-repack" not in spec_for_model(model, binary=binary, extra_buffers=True).command(9000)
    argv = spec_for_model(model, binary=binary, extra_args=("--repack",)).command(9000)
    assert "--no-repack" not in argv and "--repack" in argv
    # elsewhere nothing changes
    use_hardware(monkeypatch, epyc_avx512())
    assert "--no-repack" not in spec_for_model(model, binary=binary).command(9000)
    assert "--no-repack" in spec_for_model(model, binary=binary, extra_buffers=False).command(9000)


def test_no_repack_only_when_the_binary_has_it(tmp_path: Path) -> None:
    hw = sapphire_rapids()
    old = fake_help_binary(tmp_path, "-t, --threads N\n")
    fields, extra = server_launch(gemma_like(), tmp_path / "m.gguf", old, {}, hardware=hw)
    assert "--no-repack" not in extra
    flags, why = server_safety(hw.cpu, None, lambda: frozenset({"-t"}), set())
    assert flags == () and "no --no-repack flag" in why


def test_managed_server_config_reaches_the_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.providers._llama.server_managed import ManagedServer
    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig

    binary = fake_help_binary(tmp_path, REPACK_HELP)
    model = stored(gemma_like(), tmp_path / "m.gguf")
    use_hardware(monkeypatch, epyc_avx512())
    config = LlamaCppServerConfig(managed=True, binary=binary, extra_buffers="off")
    assert "--no-repack" in ManagedServer(config, provider="llamacpp_server").spec(model).command(1)
    use_hardware(monkeypatch, sapphire_rapids())
    config = LlamaCppServerConfig(managed=True, binary=binary, extra_buffers="on")
    assert "--no-repack" not in ManagedServer(config, provider="llamacpp_server").spec(model).command(1)


def test_doctor_shows_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from papin.cli.main import cli

    use_hardware(monkeypatch, dataclasses.replace(sapphire_rapids()))
    result = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "240"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("extra_buffers"))
    assert "False" in line and "AMX" in line


def test_doctor_json_has_the_safety_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from papin.cli.main import cli

    binary = fake_help_binary(tmp_path, REPACK_HELP)
    amx = dataclasses.replace(
        sapphire_rapids(), llama=dataclasses.replace(sapphire_rapids().llama, server_binary=binary)
    )
    use_hardware(monkeypatch, amx)
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    safety = json.loads(result.stdout)["safety"]
    assert safety["embedded"]["extra_buffers"] is False and "AMX" in safety["embedded"]["reason"]
    assert safety["llama_server"]["flags"] == ["--no-repack"]
