"""Loading settings from a TOML file plus ``BACKHAUL_*`` environment variables, for both programs.

Precedence, highest first: environment (``BACKHAUL_BUFFER__BUDGET_BYTES=1GiB``), the TOML file, the
defaults in the settings classes. Any problem becomes a :class:`ConfigError` whose message names the
offending field; the command-line front ends turn it into exit status 2. Every model below the root
derives from :class:`Section`, so an unknown key anywhere is such a problem.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backhaul.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)

ENV_PREFIX = "BACKHAUL_"


class ProgramSettings(BaseSettings):
    """Base of each program's root settings: read from ``BACKHAUL_*`` too, unknown keys refused, and
    the one setting every program has."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


class Section(BaseModel):
    """Base of every settings model below the root (a ``[section]``, a ``[[list]]`` entry, a channel).

    An unknown key is an error rather than silently ignored, so a typo (``budget_bites``) is caught
    at start and named instead of leaving the default in force. Subclasses may add to
    ``model_config`` (it is merged); they must not relax ``extra``.
    """

    model_config = ConfigDict(extra="forbid")


class InputLimits(Section):
    """Limits on what one request may carry, shared by the agent's ``[ingest]`` and the collector's
    ``[limits]`` (each sets its own defaults for the two sizes)."""

    max_request_bytes: ByteSize = ByteSize(64 * 1024**2)
    # Hard cap on what one body may decompress to: a zstd or snappy bomb gets 413, never an out-of-memory.
    max_decompressed_bytes: ByteSize = ByteSize(256 * 1024**2)
    # Decoded samples cost far more than their bytes (backhaul/wire/budget.py): one request may take
    # twice max_decompressed_bytes once decoded (estimated before decoding; more is 413), and all
    # requests being decoded together at most this (default: the same); others wait, then get 503.
    max_decoding_bytes: ByteSize | None = None
    # Label rules (backhaul/labels.py): a series over these is dropped and counted, the rest kept.
    max_labels_per_series: int = Field(128, ge=1)
    max_label_bytes: int = Field(16 * 1024, ge=64)

    def per_request_decoding_bytes(self) -> int:
        return 2 * int(self.max_decompressed_bytes)

    def total_decoding_bytes(self) -> int:
        if self.max_decoding_bytes is None:
            return self.per_request_decoding_bytes()
        return int(self.max_decoding_bytes)


def readable(path: Path) -> Path:
    """``path`` if this process can read it, else a ValueError saying why (a settings field names it)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except PermissionError:
        # The usual cause: a file installed for root, read by systemd's DynamicUser (README: LoadCredential=).
        raise ValueError(f"{path}: cannot read it as uid {os.getuid()} (permission denied)") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    return path


# A file the program must read (a certificate, a key): checked when the settings load, so a file that
# is missing or unreadable is an invalid config (exit status 2) that names the field, not a crash.
ReadableFile = Annotated[Path, AfterValidator(readable)]

# Values shipped in examples and docs, or typed as a stand-in: refused at start wherever a secret goes.
PLACEHOLDERS = frozenset(
    {
        "change-me-to-a-long-random-token",
        "change-me-to-another-long-random-token",
        "...",
        "\u2026",
        "secret",
        "password",
        "token",
        "changeme",
        "xxx",
        "todo",
        "",
    }
)
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me", "replace-me", "your-", "<")


def is_placeholder(value: str) -> bool:
    v = value.strip().lower()
    return v in PLACEHOLDERS or v.startswith(PLACEHOLDER_PREFIXES) or set(v) <= {"x", "."}


# SHA-256 of the placeholders (a digest of the example token, or of an empty $TOKEN, is as bad).
PLACEHOLDER_DIGESTS = frozenset(hashlib.sha256(p.encode()).hexdigest() for p in PLACEHOLDERS)


def _no_placeholder(value: SecretStr) -> SecretStr:
    if value.get_secret_value() and is_placeholder(value.get_secret_value()):
        raise ValueError("is a placeholder from the examples: set a real secret")
    return value


# A token or password: an example value ("change-me-...", "...") is refused at start, naming the field.
Secret = Annotated[SecretStr, AfterValidator(_no_placeholder)]


def load(cls: type[S], path: Path | None) -> S:
    """Build ``cls`` from ``path`` (TOML, optional) and the environment."""
    if path is not None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except PermissionError:
            raise ConfigError(
                f"config file {path}: cannot read it as uid {os.getuid()} (permission denied); "
                "with systemd's DynamicUser=yes pass it with LoadCredential= (see README)"
            ) from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path}: is a folder, not a file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from exc
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
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
