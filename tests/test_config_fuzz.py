"""Hostile configuration: arbitrary TOML values anywhere in the file never crash the loader.

Every invalid configuration ends in ``ConfigError`` with one ``key.path: message`` per problem,
and through ``syncer.cli.main`` in exit code 2 with those lines on stderr and no traceback.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.cli import main
from syncer.config import ConfigError, Settings, from_mapping
from syncer.config_parse import parse_duration

ENV: dict[str, str] = {}

BASE: dict[str, Any] = {
    "vault": {"address": "https://vault.example.com:8200", "kv_mount": "secret", "kv_version": 2,
              "timeout": "5s", "auth": {"method": "token", "token_file": "/run/vault-token"}},
    "kubernetes": {"kubeconfig": "", "timeout": "10s", "events": True},
    "probe": {"enabled": True, "timeout": "5s", "retries": 2, "verify_before_write": True},
    "schedule": {"interval": "5m", "jitter": "30s", "retry_min": "10s", "retry_max": "5m"},
    "metrics": {"listen": "127.0.0.1:9102"},
    "sync": {"conflict_retries": 5, "concurrency": 4},
    "leader_election": {"enabled": False},
    "registries": [{"host": "nvcr.io", "path": "registries/ngc", "username": "$oauthtoken"},
                   {"host": "quay.io", "path": "registries/quay"}],
    "targets": [{"namespace": "domino-compute", "name": "domino-quay-repos",
                 "registries": ["nvcr.io", "quay.io"], "create": False}],
}

# A problem line starts with a key path: ``vault.auth.method``, ``registries[2].host``, ``targets``.
_SEGMENT = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\x00-\x1f]|\\.)*")(?:\[\d+\])?'
KEY_PATH = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*: \S")

scalars = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "0s", "-5s", "1h30m", "250ms", "99999999999h", "nvcr.io", "http://x",
                     "kubernetes", "approle", "token", "*/5 * * * *", "61 * * * *", "0.0.0.0:99999",
                     "host:٣", "[::1]:9102", ":9102", "a" * 300, "ns/name", "UPPER"]),
    st.integers(),
    st.sampled_from([0, -1, 1, 2, 3, 10**30, -(10**30), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in the base config (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(BASE)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid base config with a few keys replaced, deleted or added."""
    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = config
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this branch
    return config


# --------------------------------------------------------------------------- a tiny TOML writer


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(config: dict[str, Any]) -> str:
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in config.items())


# --------------------------------------------------------------------------- checks


def check_loader(config: dict[str, Any]) -> Settings | ConfigError:
    """from_mapping returns Settings or raises ConfigError whose every problem names a key path."""
    try:
        return from_mapping(config, ENV)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must list at least one problem"
        for problem in exc.problems:
            assert KEY_PATH.match(problem), f"problem without a key path: {problem!r}"
        return exc


def check_cli(tmp_path: Path, config: dict[str, Any], error: ConfigError) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(path), "--once"], env=ENV)
    text = err.getvalue()
    assert code == 2, text
    assert "Traceback" not in text and "Traceback" not in out.getvalue()
    assert "invalid configuration" in text
    for problem in error.problems:
        assert problem.splitlines()[0] in text


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def test_base_config_is_valid() -> None:
    assert isinstance(from_mapping(BASE, ENV), Settings)


@FUZZ
@given(mutated_configs())
def test_mutated_config_never_crashes_and_names_the_key(tmp_path: Path, config: dict[str, Any]) -> None:
    outcome = check_loader(config)
    if isinstance(outcome, ConfigError):
        check_cli(tmp_path, config, outcome)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from([*BASE, "extra", ""]), values, max_size=6))
def test_arbitrary_top_level_never_crashes(config: dict[str, Any]) -> None:
    outcome = check_loader(config)
    assert isinstance(outcome, ConfigError), "no registries/targets cannot be a valid config"


@settings(max_examples=200, deadline=None)
@given(scalars)
def test_parse_duration_accepts_or_raises_value_error(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize(("section", "key", "value"), [
    ("schedule", "interval", math.nan),
    ("schedule", "interval", math.inf),
    ("vault", "timeout", 10**400),
    ("probe", "timeout", -math.inf),
    ("metrics", "listen", "127.0.0.1:٣"),
    ("metrics", "listen", "127.0.0.1:²"),
])
def test_known_hostile_values(tmp_path: Path, section: str, key: str, value: Any) -> None:
    config = copy.deepcopy(BASE)
    config[section][key] = value
    outcome = check_loader(config)
    assert isinstance(outcome, ConfigError)
    assert any(p.startswith(f"{section}.{key}: ") for p in outcome.problems), outcome.problems
    check_cli(tmp_path, config, outcome)


@pytest.mark.parametrize("text", [
    "", "[", "vault = ", "\x00", "[[registries]]\nhost = 1\n[[registries]]\nhost = 1",
    "a.b.c = 1\na = 2", "targets = 5\nregistries = 'x'",
])
def test_raw_toml_garbage_exits_2(tmp_path: Path, text: str) -> None:
    path = tmp_path / "garbage.toml"
    path.write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["--config", str(path), "--once"], env=ENV)
    assert code == 2
    assert "Traceback" not in err.getvalue()
    lines = [line.strip() for line in err.getvalue().splitlines()[1:]]
    assert lines and all(KEY_PATH.match(line) or line.startswith(str(path)) for line in lines), lines


def test_non_utf8_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[vault]\naddress = "https://v\xe9"\n'.encode("latin-1"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--config", str(path), "--once"], env=ENV) == 2
    assert "not UTF-8" in err.getvalue()
