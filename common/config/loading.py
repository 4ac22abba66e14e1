"""Configuration from presets, files and `--set` overrides; back to YAML (validation: validation.py).

Resolution order (`resolve_config`): dataclass defaults -> preset(map, dataset, method) -> config
file -> `--set` overrides -> validation. Every problem is a `ConfigError` whose message is one line
naming the key, and the file when the value came from one:

    config error in my.yaml: replay.mixing_ratio: must be in [0, 1], got 1.5

Files are YAML (`.yaml`, `.yml`) or TOML (`.toml`) with the sections env, replay, learner, actor
and run, and optionally `preset: {map, dataset, method}` choosing the preset.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import presets
from common.config.problems import show, suggest
from common.config.sections import SECTIONS, Config, ConfigError
from common.config.validation import validate_config

# What a preset falls back to when neither the command line nor the file names it.
DEFAULT_MAP = "3s5z"
DEFAULT_METHOD = "ovmse"
DEFAULT_DATASET_KIND = "medium"  # for the methods with an offline phase; qmix has none

# {section: {field: value}}: one layer of values (a preset, a file, overrides).
Layer = dict[str, dict[str, Any]]

_MISSING: Any = object()
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a float", str: "a string"}
_PRESET_KEYS = {
    "map": ("env", "map_name"),
    "dataset": ("run", "dataset_kind"),
    "method": ("learner", "method"),
}


# --- fields and their types --------------------------------------------------------------------


@functools.cache
def _fields(section: str) -> dict[str, tuple[type, bool]]:
    """{field: (type, optional)} of a section, from the dataclass annotations."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, bool]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        optional = False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            (tp,) = args
        out[f.name] = (tp, optional)
    return out


def all_keys() -> list[str]:
    """Every dotted key, e.g. 'learner.lr', in section and field order."""
    return [f"{s}.{k}" for s in SECTIONS for k in _fields(s)]


def _field_type(section: Any, key: Any) -> tuple[type, bool]:
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {str(section)!r}{suggest(str(section), SECTIONS)}")
    fields = _fields(section)
    if key not in fields:
        dotted = f"{section}.{key}"
        elsewhere = [f"{s}.{key}" for s in SECTIONS if key in _fields(s)]
        hint = f" (did you mean {elsewhere[0]!r}?)" if elsewhere else suggest(dotted, all_keys())
        raise ConfigError(f"unknown key {dotted!r}{hint}")
    return fields[key]


def _expected(tp: type, optional: bool) -> str:
    return _TYPE_NAMES[tp] + (" or null" if optional else "")


def _coerce(key: str, value: Any, tp: type, optional: bool) -> Any:
    """A value read from a file, checked against the field's type. Ints are not bools, strings are
    not numbers; an int is fine for a float field, an integral float for an int field (TOML's 1e6)."""
    if value is None:
        if optional:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"expected a finite float, got {show(value)}", key=key)
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"expected {_expected(tp, optional)}, got {show(value)}", key=key)


def _parse_text(key: str, text: str, tp: type, optional: bool) -> Any:
    """A value written on the command line (`--set key=text`), parsed to the field's type."""
    stripped = text.strip()
    if optional and stripped.lower() in ("none", "null"):
        return None
    if tp is bool:
        if stripped.lower() in ("true", "1"):
            return True
        if stripped.lower() in ("false", "0"):
            return False
    elif tp is int:
        try:
            return int(stripped)
        except ValueError:
            pass
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number.is_integer():
            return int(number)
    elif tp is float:
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    else:
        return text
    raise ConfigError(f"expected {_expected(tp, optional)}, got {text!r}", key=key)


# --- layers ------------------------------------------------------------------------------------


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} with plain values (for YAML/JSON and run directories)."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


def _build(values: Mapping[str, Mapping[str, Any]]) -> Config:
    return Config(**{name: cls(**values[name]) for name, cls in SECTIONS.items()})


def _layer_from_mapping(data: Any, *, allow_preset: bool) -> tuple[Layer, dict[str, Any]]:
    """Check and type a {section: {field: value}} mapping; returns (layer, preset section)."""
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of sections (env, replay, ...) at the top, got {show(data)}")
    layer: Layer = {}
    preset_section: dict[str, Any] = {}
    for section, values in data.items():
        if section == "preset" and allow_preset:
            preset_section = _preset_section(values)
            continue
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {str(section)!r}{suggest(str(section), SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"expected a mapping of keys, got {show(values)}", key=str(section))
        for key, value in values.items():
            tp, optional = _field_type(section, key)
            layer.setdefault(section, {})[key] = _coerce(f"{section}.{key}", value, tp, optional)
    return layer, preset_section


def _preset_section(values: Any) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"expected a mapping with map, dataset and method, got {show(values)}", key="preset"
        )
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _PRESET_KEYS:
            raise ConfigError(f"unknown key {f'preset.{key}'!r}{suggest(f'preset.{key}', _preset_dotted())}")
        out[key] = _coerce(f"preset.{key}", value, str, key == "dataset")
    return out


def _preset_dotted() -> list[str]:
    return [f"preset.{k}" for k in _PRESET_KEYS]


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> Config:
    """A validated Config from {section: {field: value}} on top of the dataclass defaults (no
    preset): the inverse of `config_to_dict`. `source` names where the data came from in errors."""
    try:
        layer, _ = _layer_from_mapping(data, allow_preset=False)
    except ConfigError as error:
        raise error.with_source(source) from None
    values = config_to_dict(Config())
    for section, fields in layer.items():
        values[section].update(fields)
    cfg = _build(values)
    validate_config(cfg, {key: source for key in _dotted(layer)})
    return cfg


def _dotted(layer: Layer) -> list[str]:
    return [f"{s}.{k}" for s, fields in layer.items() for k in fields]


# --- files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """A checked config file: its values, and the preset it asks for (keys map, dataset, method)."""

    path: str
    values: Layer = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=dict)


def read_config_file(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and check a YAML or TOML config file; errors name the file."""
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(
            f"unsupported config file type {suffix or '(none)'!r}: use .yaml, .yml or .toml", source=name
        )
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"cannot read the file: {reason}", source=name) from None
    try:
        data = _parse_toml(text) if suffix == ".toml" else _parse_yaml(text)
        values, preset_section = _layer_from_mapping(data, allow_preset=True)
    except ConfigError as error:
        raise error.with_source(name) from None
    return ConfigFile(name, values, preset_section)


def _parse_yaml(text: str) -> Any:
    import yaml  # here, not at the top: the learner bench imports the config on machines without PyYAML

    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"invalid YAML{where}: {problem}") from None


def _refuse_duplicate_keys(node: Any, path: str = "") -> None:
    """YAML lets a later key silently replace an earlier one; a config file must not (TOML refuses
    them itself). `node` is the composed document."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            dotted = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in first:
                    raise ConfigError(
                        f"duplicate key at line {line} (first at line {first[key]}); remove one of them",
                        key=dotted,
                    )
                first[key] = line
            _refuse_duplicate_keys(value_node, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)


def _parse_toml(text: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML needs Python 3.11+ (or the tomli package); use YAML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML: {error}") from None


# --- overrides ---------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, typed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. learner.lr=0.0005")
    dotted, value = text.split("=", 1)
    dotted = dotted.strip()
    if "." not in dotted:
        elsewhere = [f"{s}.{dotted}" for s in SECTIONS if dotted in _fields(s)]
        hint = f", e.g. {elsewhere[0]!r}" if elsewhere else f" ({', '.join(SECTIONS)})"
        raise ConfigError(f"--set {text!r}: the key needs its section{hint}")
    section, key = dotted.split(".", 1)
    tp, optional = _field_type(section, key)
    return section, key, _parse_text(dotted, value, tp, optional)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """`cfg` with 'section.key=value' overrides applied, validated."""
    values = config_to_dict(cfg)
    for section, key, value in (parse_override(text) for text in overrides):
        values[section][key] = value
    new = _build(values)
    validate_config(new)
    return new


# --- resolution --------------------------------------------------------------------------------


def resolve_config(
    map_name: str | None = None,
    dataset: str | None = None,
    method: str | None = None,
    file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """The configuration for a run: defaults -> preset -> file -> overrides -> validation.

    The preset is chosen by (map, dataset kind, method), each taken from the first place that
    names it: a `--set` of env.map_name / run.dataset_kind / learner.method, the argument here,
    the file's value of that field, the file's `preset:` section, else 3s5z / medium / ovmse
    (no dataset for qmix). The chosen names end up in those fields, so the result always says
    which preset it came from."""
    config_file = read_config_file(file) if file is not None else None
    parsed = [parse_override(text) for text in overrides]
    overridden = {(section, key): value for section, key, value in parsed}

    def pick(preset_key: str, argument: str | None) -> tuple[Any, str | None]:
        section, key = _PRESET_KEYS[preset_key]
        chosen = overridden.get((section, key), argument)
        if chosen is not None:
            # A file's own values override the preset, so a file written for another preset
            # (e.g. a run's resolved config.yaml) would silently turn this run into that one.
            if config_file is not None and key in config_file.values.get(section, {}):
                in_file = config_file.values[section][key]
                if str(in_file) != str(chosen):
                    raise ConfigError(
                        f"the file says {in_file!r} but {chosen!r} was asked for; its other values "
                        f"belong to the {in_file!r} preset, so change or remove the key in the file",
                        key=f"{section}.{key}",
                        source=config_file.path,
                    )
            return chosen, None
        if config_file is not None:
            if key in config_file.values.get(section, {}):
                return config_file.values[section][key], config_file.path
            if preset_key in config_file.preset:
                return config_file.preset[preset_key], config_file.path
        return _MISSING, None

    map_key, map_source = pick("map", map_name)
    method_key, method_source = pick("method", method)
    kind_key, kind_source = pick("dataset", dataset)
    map_key = DEFAULT_MAP if map_key is _MISSING else map_key
    method_key = DEFAULT_METHOD if method_key is _MISSING else method_key
    if kind_key is _MISSING:
        spec = presets.METHODS.get(method_key)
        kind_key = DEFAULT_DATASET_KIND if spec is None or spec.offline_phase else None

    try:
        layer = presets.preset(map_key, kind_key, method_key)
    except ConfigError as error:
        source = {"learner.method": method_source, "run.dataset_kind": kind_source}.get(
            error.key or "", map_source
        )
        raise error.with_source(source) from None

    values = config_to_dict(Config())
    sources: dict[str, str | None] = {}  # dotted key -> the file its value came from, if any

    def put(new: Layer, source: str | None) -> None:
        for section, fields in new.items():
            for key, value in fields.items():
                values[section][key] = value
                sources[f"{section}.{key}"] = source

    put(layer, None)
    if config_file is not None:
        put(config_file.values, config_file.path)
    put({"env": {"map_name": map_key}}, map_source)
    put({"run": {"dataset_kind": kind_key}}, kind_source)
    put({"learner": {"method": method_key}}, method_source)
    for section, key, value in parsed:
        put({section: {key: value}}, None)
    cfg = _build(values)
    validate_config(cfg, sources)
    return cfg


# --- back to text ------------------------------------------------------------------------------


def format_config(cfg: Config) -> str:
    """The configuration as YAML that `--config` reads back to the same Config."""
    import yaml  # see _parse_yaml

    parts = ["# ovmse configuration (resolved); `ovmse <job> --config THIS_FILE` reads it back\n"]
    for name, fields in config_to_dict(cfg).items():
        parts.append(yaml.safe_dump({name: fields}, sort_keys=False, default_flow_style=False))
    return "\n".join(parts)


def write_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write `format_config(cfg)` to `path` (e.g. a run directory's config.yaml) in one step: a
    reader (a resuming run) sees the old file or the new one, never half of one."""
    from common.atomic_files import atomic_path

    target = Path(path)
    with atomic_path(target) as tmp:
        Path(tmp).write_text(format_config(cfg), encoding="utf-8")
    return target
