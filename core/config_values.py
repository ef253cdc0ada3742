"""Checking and coercing configuration values: the types ``saiki.core.config``'s
dataclasses declare, and the ranges a value must fall in. A value that fails is a
``ConfigError`` naming its key (``section.key``), raised at load, before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal

from saiki.core.errors import ConfigError
from saiki.core.process import parse_cpus

# Numbers that must be at least some value (ports may be 0: any free port).
_MINIMA: dict[tuple[str, str], int] = {
    ("log", "segment_events"): 1,
    ("log", "group_commit_ms"): 0,
    ("speed", "allowed_lateness_s"): 0,
    ("speed", "state_ttl_s"): 1,
    ("speed", "checkpoint_interval_ms"): 10,
    ("speed", "sink_flush_ms"): 1,
    ("speed", "monitor_ms"): 1,
    ("speed", "nice"): 0,
    ("serving", "port"): 0,
    ("serving", "workers"): 1,
    ("serving", "threads"): 1,
    ("serving", "max_candidates"): 1,
    ("serving", "max_ids"): 1,
    ("serving", "max_events_per_ingest"): 1,
    ("serving", "max_in_flight"): 1,
    ("serving", "health_port"): 0,
    ("serving", "metrics_port"): 0,
    ("serving", "reload_interval_ms"): 1,
    ("schedule", "keep_views"): 2,
    ("schedule", "nice"): 0,
    ("models", "training_days"): 2,  # a day held out, and one to train on
    ("models", "max_train_rows"): 1_000,
    ("models", "max_holdout_rows"): 1_000,
    ("models", "shadow_minutes"): 0,
    ("models", "shadow_min_labelled"): 1,
    ("models", "shadow_tolerance"): 0,
}


def check_ranges(sections: dict[str, Any]) -> None:
    """Every number within its range, every share within 0..1, the CPU list readable."""
    for (section, key), least in _MINIMA.items():
        value = getattr(sections[section], key)
        if value < least:
            raise ConfigError(f"{section}.{key}: must be at least {least}, got {value}")
    for section, key in (
        ("serving", "log_features_share"),
        ("serving", "access_log_share"),
        ("models", "shadow_share"),
    ):
        share = getattr(sections[section], key)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{section}.{key}: must be within 0..1, got {share}")
    if not 0.0 < (cpu := sections["models"].shadow_cpu) <= 1.0:
        raise ConfigError(f"models.shadow_cpu: must be within (0, 1] (of one core), got {cpu}")
    for section, key in (("speed", "nice"), ("schedule", "nice")):
        if getattr(sections[section], key) > 19:
            raise ConfigError(f"{section}.{key}: must be at most 19 (Linux's lowest priority)")
    for section, key in (("speed", "cpus"), ("serving", "cpus"), ("serving", "ingest_cpus")):
        try:
            parse_cpus(getattr(sections[section], key))
        except ValueError as exc:
            raise ConfigError(f"{section}.{key}: {exc}") from exc
    for key in ("port", "health_port", "metrics_port"):
        port = getattr(sections["serving"], key)
        if port > 65535:
            raise ConfigError(f"serving.{key}: must be at most 65535, got {port}")


def build_section(section: str, cls: type[Any], values: dict[str, Any]) -> Any:
    """One section's dataclass from its raw values, each coerced to its declared type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"unknown configuration key {section}.{key}")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], raw)
    return cls(**kwargs)


def _table(name: str, raw: Any) -> dict[str, str]:
    """A TOML table of plain values (JSON from the environment), values as strings."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: expected a table (JSON object), got {raw!r}") from exc
    if not isinstance(raw, dict) or any(isinstance(v, dict | list) for v in raw.values()):
        raise ConfigError(f"{name}: expected a table of plain values")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}


def _choice(name: str, hint: Any, raw: Any) -> Any:
    options = typing.get_args(hint)
    if raw not in options:
        choices = " | ".join(map(str, options))
        raise ConfigError(f"{name}: expected one of {choices}, got {raw!r}")
    return raw


def _coerce(name: str, hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is dict or origin is Literal:
        return _table(name, raw) if origin is dict else _choice(name, hint, raw)
    target = hint
    if isinstance(hint, types.UnionType):
        target = next(a for a in typing.get_args(hint) if a is not type(None))
    if isinstance(raw, target) and not (target is int and isinstance(raw, bool)):
        return raw
    if target is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            if target is bool:
                if raw.lower() in {"1", "true", "yes", "on"}:
                    return True
                if raw.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(raw)
            return target(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected {target.__name__}, got {raw!r}") from exc
    raise ConfigError(f"{name}: expected {target.__name__}, got {type(raw).__name__}")
