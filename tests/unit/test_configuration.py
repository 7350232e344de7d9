"""The settings are written once, in the settings classes: README.md's Configuration table
and deploy/local/services.txt must agree with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from services.alerts.settings import AlertsSettings
from services.common.settings import KafkaSettings, ProcessSettings, RedisSettings
from services.ingest.settings import IngestSettings
from services.personalisation.settings import PersonalisationSettings
from services.profile.settings import ProfileSettings
from tests.paths import REPO_ROOT

SETTINGS: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    RedisSettings,
    ProcessSettings,
    IngestSettings,
    ProfileSettings,
    PersonalisationSettings,
    AlertsSettings,
)
# Variables the README documents that no settings class reads, and the file that does.
READ_ELSEWHERE = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "services/common/telemetry.py",
    "OTEL_TRACES_EXPORTER": "services/common/telemetry.py",
    "OTEL_SERVICE_NAME": "services/common/telemetry.py",
    "PROFILE_WORKERS": "deploy/local/services.txt",
    "CX_CACHE_DIR": "deploy/local/stack.sh",
}
# Defaults the README words instead of spelling them: (the words, the setting's default).
WORDED = {
    "PROFILE_ERASURE_SALT": ("generated", ""),
    "PERSONALISATION_PROFILE_ADDRESS": ("this stack's profile port", ""),
    "ALERTS_PROFILE_ADDRESS": ("this stack's profile port", ""),
}


def environment_variables() -> dict[str, FieldInfo]:
    """Every setting by the environment variable that sets it."""
    out: dict[str, FieldInfo] = {}
    for cls in SETTINGS:
        prefix = cls.model_config.get("env_prefix") or ""
        for name, info in cls.model_fields.items():
            variable = (prefix + name).upper()
            assert variable not in out, f"{variable} is set by two settings classes"
            out[variable] = info
    return out


def readme_rows() -> dict[str, str]:
    """The Configuration table of README.md: variable -> default cell."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        name, default = (cell.strip() for cell in line.strip().strip("|").split("|")[:2])
        assert name.count("`") == 2, f"one variable a row: {line}"
        rows[name.strip("`")] = default
    assert rows, "no Configuration table in README.md"
    return rows


def as_setting(info: FieldInfo, cell: str) -> Any:
    """A README default cell read as the setting's type; relative paths are the repo's."""
    assert info.annotation is not None
    value = TypeAdapter(info.annotation).validate_python(cell.strip("`"))
    if isinstance(value, Path) and isinstance(info.default, Path) and info.default.is_absolute():
        return REPO_ROOT / value
    return value


@pytest.mark.parametrize(("variable", "cell"), readme_rows().items())
def test_every_readme_variable_is_a_setting_with_that_default(variable: str, cell: str) -> None:
    fields = environment_variables()
    if variable in READ_ELSEWHERE:
        assert variable not in fields
        assert variable in (REPO_ROOT / READ_ELSEWHERE[variable]).read_text()
        return
    assert variable in fields, f"README documents {variable}, which no settings class reads"
    default = fields[variable].default
    if variable in WORDED:
        assert (cell, default) == WORDED[variable]
    else:
        assert as_setting(fields[variable], cell) == default, f"{variable}: README says {cell}"


def test_every_setting_is_in_the_readme() -> None:
    assert set(environment_variables()) - set(readme_rows()) == set()


def services_txt() -> list[list[str]]:
    lines = (REPO_ROOT / "deploy/local/services.txt").read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def test_services_txt_ports_are_the_settings_defaults() -> None:
    fields = environment_variables()
    checked = 0
    for name, port, _module, *options in services_txt():
        named = {k: v for k, _, v in (option.partition("=") for option in options)}
        if port != "-":
            # stack.sh lets <NAME>_GRPC_PORT (or the variable port= names) override the
            # port: the setting it stands for.
            variable = named.get("port") or name.upper().replace("-", "_") + "_GRPC_PORT"
            assert int(port) == fields[variable].default, f"{name}: {port} vs {variable}"
            checked += 1
        for option in options:
            key, _, value = option.partition("=")
            if key == "port":
                assert port != "-", f"{name}: port= without a port"
            elif key == "metrics":
                variable, _, default = value.partition(":")
                assert int(default) == fields[variable].default, f"{name}: {option}"
                checked += 1
            elif key == "replicas":
                assert value in readme_rows(), f"{name}: {value} is not documented"
    assert checked >= 3
