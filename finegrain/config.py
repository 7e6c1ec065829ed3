"""Nested config dataclasses: load from YAML, override with `key.sub=value`, validate.

Every config in finegrain is a dataclass whose fields carry their help text in
`field(metadata={"help": ...})` and whose `__post_init__` checks values with `check_*` helpers,
so a bad value fails with a message that names the field and what is allowed:

    @dataclass
    class Sampling:
        temperature: float = field(default=0.7, metadata={"help": "softmax temperature"})
        def __post_init__(self):
            check_range(self, "temperature", 0.0, None, low_open=True)

    cfg = load_config(TrainConfig, "configs/detox.yaml", ["sampling.temperature=0.9"])

Nothing here imports torch: config loading must stay cheap for the CLI.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


# --- validation helpers used in __post_init__ ---------------------------------------------


def _name(obj: Any, attr: str) -> str:
    prefix = getattr(obj, "_path", "")
    return f"{prefix}.{attr}" if prefix else attr


def check_choice(obj: Any, attr: str, allowed: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless `obj.attr` is one of `allowed`."""
    allowed = list(allowed)
    value = getattr(obj, attr)
    if value not in allowed:
        raise ConfigError(
            f"{_name(obj, attr)}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
        )


def existing_file(path: str | Path, field_name: str) -> Path:
    """`path` when it names a file; otherwise a ConfigError naming `field_name` and, for a relative
    path, the working folder it was looked for in (configs name files relative to where the command runs)."""
    found = Path(path).expanduser()
    if found.is_file():
        return found
    where = "" if found.is_absolute() else f" (relative paths are read from the working folder, {Path.cwd()})"
    raise ConfigError(f"{field_name}: {path} does not exist{where}")


def check_range(
    obj: Any,
    attr: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ConfigError unless low <= obj.attr <= high (open ends where asked)."""
    value = getattr(obj, attr)
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{_name(obj, attr)}: {value!r} is outside the allowed range {interval}")


# --- loading --------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML value (or a string from the command line) into `tp`."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {'a number' if tp is float else 'an integer'}, got {value!r}") from None
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(value)


def _build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {path}{unknown[0]}; {cls.__name__} has: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    _CURRENT_PATH.append(where)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None
    finally:
        _CURRENT_PATH.pop()


# __post_init__ messages name the full dotted path: the builder tells the instance where it is.
_CURRENT_PATH: list[str] = []


class ConfigBase:
    """Mixin for config dataclasses: knows its dotted path, for error messages."""

    @property
    def _path(self) -> str:
        return _CURRENT_PATH[-1] if _CURRENT_PATH else ""


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": "1"}, "c": "x"}` (values stay strings; YAML-parsed later)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[parts[-1]] = _parse_scalar(value)
    return tree


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML-able data (Paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build `cls` from the defaults, then a YAML file, then `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    try:
        return _build(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def save_config(cfg: Any, path: str | Path) -> None:
    from finegrain.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
