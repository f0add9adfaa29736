"""Reading config values: one TOML table at a time (``Section``), with key paths for every
problem, and the value checks (durations, Kubernetes names, label selectors).

Pure: no I/O. ``config`` builds the settings objects from these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_LABEL_ONLY = re.compile(rf"^{_DNS_LABEL}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SET_TERM = re.compile(r"^(\S+)\s+(in|notin)\s*\(([^()]*)\)$")


def name_problem(value: str, label: bool = False) -> str:
    """Why ``value`` is not a Kubernetes object name, or "". Objects (Secrets, ServiceAccounts,
    Leases) need a DNS-1123 subdomain (<= 253, labels of lowercase alphanumerics and '-' joined
    by single dots); namespaces a DNS-1123 label (<= 63, no dot). The API server answers 422."""
    if label:
        if len(value) > 63 or not _DNS_LABEL_ONLY.match(value):
            return ("is not a valid namespace name: a DNS-1123 label (at most 63 lowercase "
                    f"letters, digits and '-', starting and ending with a letter or digit; got {value!r})")
        return ""
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return ("is not a valid Kubernetes name: a DNS-1123 subdomain (at most 253 lowercase "
                "letters, digits, '-' and '.', each dot-separated part starting and ending with a "
                f"letter or digit; got {value!r})")
    return ""


def selector_problem(selector: str) -> str:
    """Why a Kubernetes label selector (``k=v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``,
    ``k``, ``!k``, comma = AND) would be refused by the API server; empty when it is valid."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    for raw in terms:
        term = raw.strip()
        values: list[str] = []
        if match := _SET_TERM.match(term):
            key, values = match.group(1), [v.strip() for v in match.group(3).split(",")]
            if values == [""]:
                return f"is not a label selector: empty value set in {term!r}"
        elif term.startswith("!"):
            key = term[1:].strip()
        elif "=" in term:
            key, _, value = re.split(r"(!=|==|=)", term, maxsplit=1)
            key, values = key.strip(), [value.strip()]
        else:
            key = term
        if not _LABEL_KEY.match(key) or len(key) > 317:
            return f"is not a label selector: bad key in {term!r}"
        if not all(_LABEL_VALUE.match(v) for v in values):
            return f"is not a label selector: bad value in {term!r}"
    return ""


def parse_duration(value: object) -> float:
    """``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '90s', '5m' or '1h30m'")
    if isinstance(value, int | float):
        # TOML allows nan, inf and integers too large for a float: none is a duration.
        if isinstance(value, int) and abs(value) > 10**12 or not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and any(match.groups()):
            h, m, s, ms = (int(g or 0) for g in match.groups())
            return h * 3600 + m * 60 + s + ms / 1000
    raise ValueError("expected a duration like '90s', '5m' or '1h30m'")


def checks(*, minimum: int | None = None, maximum: float | None = None, why: str = "",
           zero_ok: bool = False, strip: bool | str = False,
           env: tuple[str, ...] = ()) -> dict[str, Any]:
    """How ``Section.value`` checks a settings field (its ``metadata``), declared next to it.

    ``minimum``/``maximum`` bound an integer (both required) or cap a duration (``why`` says
    why); durations must be > 0 unless ``zero_ok``; ``strip`` trims a string (True: whitespace,
    a str: those characters); ``env`` names variables read, in order, when the key is unset or empty.
    """
    return {"minimum": minimum, "maximum": maximum, "why": why, "zero_ok": zero_ok,
            "strip": strip, "env": env}


def setting(default: Any, **check: Any) -> Any:
    """A settings field with its one default and its ``checks``. (A field without a default
    uses ``dataclasses.field(metadata=checks(...))``, which mypy sees as required.)"""
    return dataclasses.field(default=default, metadata=checks(**check))


_EMPTY: dict[str, Any] = {"str": "", "tuple[str, ...]": ()}
"""What a field without a default reads as when its key is missing (its own check says "required")."""
_PLAIN = {"str", "bool", "int", "float", "tuple[str, ...]"}


class Section:
    """Typed access to one TOML table that records problems instead of raising."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        self.seen: set[str] = set()
        if not isinstance(data, Mapping):
            self.problem("", "must be a table")

    def key(self, name: str) -> str:
        # Odd keys (spaces, dots, control characters, empty) are shown quoted, as TOML writes them.
        shown = name if _BARE_KEY.match(name) else json.dumps(name)
        return f"{self.path}.{shown}" if self.path else shown

    def problem(self, name: str, message: str) -> None:
        self.problems.append(f"{self.key(name) if name else self.path}: {message}")

    def _get(self, name: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in types:
            self.problem(name, f"must be {what}")
            return default
        if not isinstance(value, types):
            self.problem(name, f"must be {what}")
            return default
        return value

    def get_str(self, name: str, default: str = "") -> str:
        return str(self._get(name, default, (str,), "a string"))

    def get_bool(self, name: str, default: bool) -> bool:
        return bool(self._get(name, default, (bool,), "true or false"))

    def get_int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = int(self._get(name, default, (int,), "an integer"))
        if not minimum <= value <= maximum:
            self.problem(name, f"must be between {minimum} and {maximum}")
            return default
        return value

    def get_duration(self, name: str, default: float, positive: bool = True) -> float:
        self.seen.add(name)
        if name not in self.data:
            return default
        try:
            value = parse_duration(self.data[name])
        except ValueError as exc:
            self.problem(name, str(exc))
            return default
        if positive and value <= 0:
            self.problem(name, "must be greater than zero")
            return default
        return value

    def get_str_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name, [], (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.problem(name, "must be a list of strings")
            return ()
        return tuple(value)

    def value(self, cls: type[Any], name: str, env: Mapping[str, str] | None = None, *,
              default: Any = None) -> Any:
        """Key ``name`` read as ``cls``'s field of that name declares it: by its annotation
        (str, bool, int, float = a duration, tuple[str, ...]), with its default (unless
        ``default`` is given) and its ``checks``."""
        spec = {f.name: f for f in dataclasses.fields(cls)}[name]
        kind, meta = str(spec.type), spec.metadata
        if kind not in _PLAIN or kind == "int" and meta.get("minimum") is None:
            raise TypeError(f"{cls.__name__}.{name}: a {kind} setting needs its own reader"
                            if kind not in _PLAIN else f"{cls.__name__}.{name}: an int needs bounds")
        if default is None:
            default = _EMPTY[kind] if spec.default is dataclasses.MISSING else spec.default
        if kind == "bool":
            return self.get_bool(name, default)
        if kind == "int":
            return self.get_int(name, default, meta["minimum"], meta["maximum"])
        if kind == "float":
            return self._duration(name, default, meta)
        if kind == "tuple[str, ...]":
            return self.get_str_list(name)
        text = self.get_str(name, default)
        strip = meta.get("strip", False)
        text = text.strip() if strip is True else text.strip(strip) if strip else text
        for var in meta.get("env", ()):
            text = text or (env or {}).get(var, "")
        return text

    def read(self, cls: type[Any], env: Mapping[str, str] | None = None, *,
             skip: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every plain-valued field of ``cls`` but ``skip``, in declaration order (so problems are
        reported in that order): name -> value, for ``cls(**values, ...)``."""
        defaults = defaults or {}
        return {f.name: self.value(cls, f.name, env, default=defaults.get(f.name))
                for f in dataclasses.fields(cls) if f.name not in skip and str(f.type) in _PLAIN}

    def _duration(self, name: str, default: float, meta: Mapping[str, Any]) -> float:
        value = self.get_duration(name, default, positive=not meta.get("zero_ok", False))
        if (maximum := meta.get("maximum")) is not None and value > maximum:
            self.problem(name, f"must be at most {maximum:g}s ({meta['why']})")
            return default
        return value

    def table(self, name: str) -> Section:
        self.seen.add(name)
        return Section(self.data.get(name, {}), self.key(name), self.problems)

    def table_list(self, name: str) -> list[Section]:
        value = self._get(name, [], (list,), "an array of tables ([[" + name + "]])")
        return [Section(item, f"{self.key(name)}[{i}]", self.problems) for i, item in enumerate(value)]

    def finish(self) -> None:
        """Report keys nobody asked for: usually typos."""
        for unknown in sorted(set(self.data) - self.seen):
            self.problems.append(f"{self.key(unknown)}: unknown key")
