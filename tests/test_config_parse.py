"""Reading one TOML table (``Section``): key paths on every problem, values typed and checked by
the settings field they fill (its one default, its bounds), durations, names and selectors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from syncer import config
from syncer.config_parse import (
    Section,
    checks,
    name_problem,
    parse_duration,
    selector_problem,
    setting,
)


@dataclass(frozen=True)
class Example:
    """A settings class as config.py writes them."""

    name: str
    count: int = setting(3, minimum=1, maximum=9)
    wait: float = 30.0
    pause: float = setting(0.0, zero_ok=True)
    cap: float = setting(5.0, maximum=60.0, why="a reason")
    mount: str = setting("secret", strip="/")
    selector: str = setting("", strip=True)
    identity: str = setting("", env=("POD_NAME", "HOSTNAME"))
    enabled: bool = True
    hosts: tuple[str, ...] = ()
    token: str = field(default="", metadata=checks())


def read(data: dict[str, Any], env: dict[str, str] | None = None,
         **kw: Any) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    values = Section(data, "example", problems).read(Example, env, **kw)
    return values, problems


def test_missing_keys_take_the_field_defaults() -> None:
    values, problems = read({})
    assert problems == []
    assert values == {"name": "", "count": 3, "wait": 30.0, "pause": 0.0, "cap": 5.0, "mount": "secret",
                      "selector": "", "identity": "", "enabled": True, "hosts": (), "token": ""}


def test_values_are_read_trimmed_and_checked() -> None:
    values, problems = read({"name": "x", "count": 9, "wait": "1m30s", "pause": 0, "cap": "60s",
                             "mount": "/kv/", "selector": "  team=a ", "enabled": False,
                             "hosts": ["a", "b"]})
    assert problems == []
    assert (values["count"], values["wait"], values["pause"], values["cap"]) == (9, 90.0, 0.0, 60.0)
    assert (values["mount"], values["selector"], values["hosts"]) == ("kv", "team=a", ("a", "b"))


def test_bad_values_are_named_by_path_and_fall_back_to_the_default() -> None:
    values, problems = read({"name": 1, "count": 10, "wait": "0s", "pause": -1, "cap": "61s",
                             "enabled": "yes", "hosts": ["a", 2]})
    assert problems == [
        "example.name: must be a string",
        "example.count: must be between 1 and 9",
        "example.wait: must be greater than zero",
        "example.pause: must not be negative",
        "example.cap: must be at most 60s (a reason)",
        "example.enabled: must be true or false",
        "example.hosts: must be a list of strings",
    ]
    assert (values["count"], values["wait"], values["cap"], values["enabled"]) == (3, 30.0, 5.0, True)


def test_booleans_are_not_integers() -> None:
    _, problems = read({"count": True})
    assert problems == ["example.count: must be an integer"]


def test_environment_fallbacks_apply_in_order_when_the_key_is_unset_or_empty() -> None:
    assert read({}, {"HOSTNAME": "h"})[0]["identity"] == "h"
    assert read({}, {"POD_NAME": "p", "HOSTNAME": "h"})[0]["identity"] == "p"
    assert read({"identity": ""}, {"POD_NAME": "p"})[0]["identity"] == "p"
    assert read({"identity": "mine"}, {"POD_NAME": "p"})[0]["identity"] == "mine"
    assert read({}, None)[0]["identity"] == ""


def test_skip_and_other_defaults() -> None:
    values, _ = read({"token": "x"}, skip=("token", "name"), defaults={"mount": "other"})
    assert "token" not in values and "name" not in values and values["mount"] == "other"


def test_keys_nobody_read_are_reported_quoted_when_odd() -> None:
    problems: list[str] = []
    sec = Section({"known": "x", "typo": 1, "has space": 2, "": 3}, "root", problems)
    sec.get_str("known")
    sec.finish()
    assert problems == ['root."": unknown key', 'root."has space": unknown key', "root.typo: unknown key"]


def test_tables_and_arrays_of_tables_carry_their_paths() -> None:
    problems: list[str] = []
    root = Section({"vault": "not a table", "items": [{"a": 1}, 5]}, "", problems)
    root.table("vault")
    items = root.table_list("items")
    items[0].get_str("a")
    assert problems == ["vault: must be a table", "items[1]: must be a table", "items[0].a: must be a string"]


def _settings_classes() -> list[type[Any]]:
    return [c for c in vars(config).values()
            if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == config.__name__]


def test_every_settings_field_is_readable_with_its_default_and_bounds() -> None:
    """An integer field without bounds, or a type the reader does not know, fails here, not in production."""
    not_keys = {config.MetricsSettings: ("host", "port")}  # they come from metrics.listen
    for cls in _settings_classes():
        values = Section({}, cls.__name__, []).read(cls, skip=not_keys.get(cls, ()))
        for f in dataclasses.fields(cls):
            if f.name in values and f.default is not dataclasses.MISSING:
                assert values[f.name] == f.default, (cls.__name__, f.name)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1m500ms", 60.5), (12, 12.0), (0.5, 0.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m", "1s1h", True, float("inf"), float("nan"), -1,
                                  10**13, [1]])
def test_not_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("value", "label", "ok"), [
    ("registry-pull", False, True), ("a.b-c", False, True), ("Upper", False, False),
    ("a" * 254, False, False), ("-a", False, False), ("a..b", False, False),
    ("team-a", True, True), ("a.b", True, False), ("a" * 64, True, False),
])
def test_kubernetes_names(value: str, label: bool, ok: bool) -> None:
    assert (name_problem(value, label) == "") is ok


@pytest.mark.parametrize(("selector", "ok"), [
    ("team=a", True), ("team==a,env!=prod", True), ("team in (a, b)", True), ("team notin (a)", True),
    ("team", True), ("!team", True), ("example.com/team=a", True),
    ("team in ()", False), ("team=a b", False), ("=a", False), ("te am=a", False), ("team in (a", False),
])
def test_label_selectors(selector: str, ok: bool) -> None:
    assert (selector_problem(selector) == "") is ok


def test_a_field_the_reader_cannot_check_is_a_programming_error_not_a_silent_default() -> None:
    @dataclass(frozen=True)
    class Careless:
        retries: int = 3
        limit: float | None = None

    for name in ("retries", "limit"):
        with pytest.raises(TypeError, match=f"Careless.{name}"):
            Section({}, "careless", []).value(Careless, name)
