"""Read settings from the environment, loudly.

Every setting that comes from the environment goes through one of these helpers, so a typo
such as ``DJANGO_DEBUG=yes`` fails at start-up with a message naming the variable instead of
silently meaning something else (after healthchecks' ``envbool``).

``env_secret`` also reads ``NAME_FILE`` (the path of a file holding the value), which is how
Docker and Kubernetes hand secrets to a process.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_UNSET = object()

TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off"}


def env_str(name: str, default: str | None | object = _UNSET) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is _UNSET:
            raise ImproperlyConfigured(f"Environment variable {name} is required but not set.")
        return default  # type: ignore[return-value]
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in TRUE_VALUES:
        return True
    if lowered in FALSE_VALUES:
        return False
    raise ImproperlyConfigured(
        f"Environment variable {name}={value!r} is not a boolean; use one of "
        f"{sorted(TRUE_VALUES | FALSE_VALUES)}."
    )


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"Environment variable {name}={value!r} is not an integer.") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"Environment variable {name}={value!r} is not a number.") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name: str, default: str | None | object = _UNSET) -> str | None:
    """The value of NAME, or the contents of the file named by NAME_FILE."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from None
    return env_str(name, default)


def load_env_file(path: Path) -> None:
    """Read ``KEY=VALUE`` lines from a local ``.env`` file into the environment.

    Variables already set in the real environment win; blank lines and ``#`` comments are
    skipped. ``make demo`` writes one with ``DJANGO_DEBUG=1`` so that ``manage.py`` works in a
    development checkout; production sets the environment itself and has no such file.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ImproperlyConfigured(f"{path}, line {number}: expected KEY=VALUE, got {line!r}.")
        os.environ.setdefault(key.strip(), value.strip().strip("'\""))
