"""Settings described where they are defined: a dataclass field says its default, its meaning,
its unit and its bounds once, and the configuration loader, `check-config` and the operator
docs' configuration reference all read that one description.

    @dataclass(frozen=True)
    class DeliveryConfig:
        max_attempts: int = setting(10, "Unacknowledged attempts before the dead-letter state.", minimum=1)

This module only describes; it reads nothing. The loader is `gateway.app.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

METADATA_KEY: Final = "transfer_gateway.setting"


@dataclass(frozen=True)
class Setting:
    """How one dataclass field appears in the configuration file.

    `key` is the TOML key when it is not the field's name; `unit` says how a number reads
    ("seconds", "days", "fen", …) and, for a `timedelta` field, what the number counts;
    `minimum`/`maximum` bound a number (inclusive); `check` parses or refuses a value (raising
    ValueError with the reason), for formats such as host:port; `inline` puts a nested
    dataclass's keys in its parent's table instead of a table of its own; `example` shows a
    required value in the reference; `empty_is_none` lets `""` switch an optional value off.
    """

    doc: str
    key: str | None = None
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], object] | None = None
    inline: bool = False
    example: str | None = None
    empty_is_none: bool = False


def setting(
    default: Any = dataclasses.MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
    key: str | None = None, unit: str | None = None, minimum: float | None = None, maximum: float | None = None,
    check: Callable[[Any], object] | None = None, inline: bool = False, example: str | None = None,
    empty_is_none: bool = False,
) -> Any:
    """A dataclass field that is a configuration setting (no default: the setting is required)."""
    described = Setting(doc=doc, key=key, unit=unit, minimum=minimum, maximum=maximum, check=check, inline=inline,
                        example=example, empty_is_none=empty_is_none)
    metadata = {METADATA_KEY: described}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def described(field: dataclasses.Field[Any]) -> Setting | None:
    """The field's setting, or None for a field the configuration file does not set."""
    found = field.metadata.get(METADATA_KEY)
    return found if isinstance(found, Setting) else None
