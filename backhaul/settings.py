"""Loading settings from a TOML file plus ``BACKHAUL_*`` environment variables, for both programs.

Precedence, highest first: environment (``BACKHAUL_BUFFER__BUDGET_BYTES=1GiB``), the TOML file, the
defaults in the settings classes. Any problem becomes a :class:`ConfigError` whose message names the
offending field; the command-line front ends turn it into exit status 2. Every model below the root
derives from :class:`Section`, so an unknown key anywhere is such a problem.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backhaul.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)

ENV_PREFIX = "BACKHAUL_"


def settings_config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")


class Section(BaseModel):
    """Base of every settings model below the root (a ``[section]``, a ``[[list]]`` entry, a channel).

    An unknown key is an error rather than silently ignored, so a typo (``budget_bites``) is caught
    at start and named instead of leaving the default in force. Subclasses may add to
    ``model_config`` (it is merged); they must not relax ``extra``.
    """

    model_config = ConfigDict(extra="forbid")


def load(cls: type[S], path: Path | None) -> S:
    """Build ``cls`` from ``path`` (TOML, optional) and the environment."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc

    class FromFile(cls):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(**{**cls.model_config, "toml_file": path})

        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls))
            return tuple(sources)

    try:
        settings: S = FromFile()
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc
    return settings


def describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(root)"
        given: Any = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        # pydantic's "Extra inputs are not permitted" reads as if the value were the problem.
        problem = "no such setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"invalid config: {where}: {problem}{shown}")
    return "\n".join(lines)
