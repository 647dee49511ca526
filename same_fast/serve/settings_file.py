"""Reading a ``same-fast serve --config`` file: TOML, YAML or JSON, one flat table of settings.

The format comes from the extension (``.toml``, ``.yaml``/``.yml``, ``.json``); YAML needs
PyYAML. A ``[serve]`` table (or ``serve:`` mapping) may hold the settings instead of the top
level, so one file can configure several tools.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from same_fast.errors import InputError


def read_settings(path: str) -> dict[str, Any]:
    """The settings in ``path`` as a flat ``{key: value}`` dict; InputError when unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--config: cannot read '{path}' ({getattr(e, 'strerror', None) or e})"
                         ) from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise InputError("--config: a YAML file needs PyYAML (pip install pyyaml); "
                                 "TOML and JSON need nothing") from None
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"--config: '{path}' must end in .toml, .yaml, .yml or .json")
    except InputError:
        raise
    except Exception as e:  # each parser has its own error types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--config: cannot parse '{path}' ({first})") from None
    if isinstance(data, dict) and isinstance(data.get("serve"), dict):
        data = data["serve"]
    if not isinstance(data, dict):
        raise InputError(f"--config: '{path}' must hold a table of settings")
    for key, value in data.items():
        if isinstance(value, dict | list):
            raise InputError(f"--config {path}: setting '{key}' must be a single value")
    return data
