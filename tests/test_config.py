"""Config resolution: defaults, YAML files, dotted overrides and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hst.config import ConfigError, TrainConfig, resolve_config, save_config


@dataclass
class Inner:
    proportion: float = 0.5
    name: str = "entry"


@dataclass
class Outer:
    data: Inner = field(default_factory=Inner)
    epochs: int = 20
    flag: bool = False


def test_defaults_file_and_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\ndata:\n  name: class\n")
    config = resolve_config(Outer, path, ["data.proportion=0.3", "epochs=5", "flag=true"])
    assert config == Outer(data=Inner(proportion=0.3, name="class"), epochs=5, flag=True)


def test_unknown_key_names_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'data.proportoin'.*'data.proportion'"):
        resolve_config(Outer, None, ["data.proportoin=0.3"])


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'epoch'.*'epochs'"):
        resolve_config(Outer, path)


def test_type_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(Outer, None, ["epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config(Outer, None, ["epochs"])


def test_saved_config_reproduces(tmp_path: Path) -> None:
    config = resolve_config(Outer, None, ["data.name=class", "epochs=7"])
    save_config(config, tmp_path / "run" / "config.yaml")
    assert resolve_config(Outer, tmp_path / "run" / "config.yaml") == config


def test_unknown_section_suggests_the_full_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"'dat\.proportion'; did you mean 'data\.proportion'"):
        resolve_config(TrainConfig, None, ["dat.proportion=0.3"])
    with pytest.raises(ConfigError, match=r"'data\.proportion' is a value, not a section"):
        resolve_config(TrainConfig, None, ["data.proportion.x=1"])


def test_retired_keys_load_at_their_off_value_only(tmp_path: Path) -> None:
    from hst.config import TrainConfig, resolve_config
    from hst.config.loader import ConfigError

    saved = tmp_path / "config.yaml"
    saved.write_text("model:\n  sarl_gate: false\nmethod:\n  pooled_calibration: false\n  cst_neighbours: 7\n")
    assert resolve_config(TrainConfig, saved).method.cst_neighbours == 7
    saved.write_text("model:\n  sarl_gate: true\n")
    with pytest.raises(ConfigError, match=r"'model\.sarl_gate' was removed"):
        resolve_config(TrainConfig, saved)
