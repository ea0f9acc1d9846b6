"""Typed configs from dataclasses, YAML files and dotted ``key=value`` overrides.

Every verb of the CLI resolves its options the same way: dataclass defaults, then an optional YAML file,
then command-line overrides such as ``method.name=partial_bce`` or ``data.proportion=0.5``.
An unknown key is an error that names the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config schema."""


def valid_keys(schema: type) -> list[str]:
    """All dotted keys of a dataclass schema (leaves and sections)."""
    keys: list[str] = []
    for field in dataclasses.fields(schema):
        keys.append(field.name)
        field_type = field.type if isinstance(field.type, type) else None
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        nested = field_type if field_type and dataclasses.is_dataclass(field_type) else None
        if nested is None and default is not None and dataclasses.is_dataclass(default):
            nested = type(default)
        if nested is not None:
            keys.extend(f"{field.name}.{sub}" for sub in valid_keys(nested))
    return keys


def _full_key(dotted: str, value: Any) -> str:
    """Follow single-key nesting down to the leaf, so ``{dat: {proportion: 1}}`` reads ``dat.proportion``."""
    while isinstance(value, dict) and len(value) == 1:
        key, value = next(iter(value.items()))
        dotted = f"{dotted}.{key}"
    return dotted


def _check_keys(schema: type, values: dict[str, Any], where: str, prefix: str = "") -> None:
    allowed = valid_keys(schema)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if dotted not in allowed:
            full = _full_key(dotted, value)
            close = difflib.get_close_matches(full, allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {full!r}{hint}")
        has_children = any(k.startswith(dotted + ".") for k in allowed)
        if isinstance(value, dict) and has_children:
            _check_keys(schema, value, where, prefix=dotted + ".")
        elif isinstance(value, dict):
            sub = _full_key(dotted, value)
            raise ConfigError(f"{where}: {dotted!r} is a value, not a section, so {sub!r} is not a config key")


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. data.proportion=0.5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    # YAML parsing gives numbers, booleans and null their types; strings stay strings.
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("[", "{")):
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


RETIRED_KEYS: dict[str, Any] = {
    "model.sarl_gate": False,
    "method.pooled_calibration": False,
    "method.calibration_split": "validation",
    "method.relabel_every": 1,
}
"""Keys that briefly existed, with the value that meant "off": a saved config that has them at that value still
loads (the key is dropped); any other value is an error, since its behaviour no longer exists."""


def _drop_retired(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for dotted, off in RETIRED_KEYS.items():
        section, key = dotted.split(".", 1)
        holder = out.get(section)
        if isinstance(holder, dict) and key in holder:
            if holder[key] != off:
                raise ConfigError(f"{where}: {dotted!r} was removed; only {dotted}={off} (its no-op value) is accepted")
            del holder[key]
    return out


def resolve_config(schema: type[T], config_file: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build a ``schema`` instance: defaults ← YAML file ← overrides, type-checked."""
    merged = OmegaConf.structured(schema)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
        layers.append((str(path), loaded))
    for text in overrides:
        key, value = _parse_override(text)
        layers.append((f"override {text!r}", _nest(key, value)))
    for where, values in layers:
        values = _drop_retired(values, where)
        _check_keys(schema, values, where)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(values))
        except OmegaConfBaseException as error:
            raise ConfigError(f"{where}: {error.msg if hasattr(error, 'msg') else error}") from error
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (the file that reproduces the run)."""
    from hst.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
