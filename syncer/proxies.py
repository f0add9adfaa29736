"""Which egress proxy a probe request goes through: pure, no I/O.

The environment convention of curl and requests (https://curl.se/docs/manpage.html#ENVIRONMENT):
``https_proxy``/``HTTPS_PROXY`` for https URLs, ``http_proxy``/``HTTP_PROXY`` for http URLs,
``all_proxy``/``ALL_PROXY`` as the fallback, the lower-case form winning when both are set.
``no_proxy``/``NO_PROXY`` lists hosts reached directly: ``*``, a host name (``example.com`` and
``.example.com`` both match the name and every subdomain), an IP address, a CIDR block, each
optionally with ``:PORT``. ``probe.proxy`` overrides the environment; ``NO_PROXY`` still applies.

The environment is read by cli.py and handed in as ``ProxyEnv``; nothing here reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ProxyEnv:
    """The proxy variables of the process environment (values as found, unvalidated)."""

    https: tuple[str, str] = ("", "")
    """(variable name, value) for https URLs, e.g. ``("HTTPS_PROXY", "http://proxy:3128")``."""
    http: tuple[str, str] = ("", "")
    """(variable name, value) for http URLs."""
    all: tuple[str, str] = ("", "")
    """(variable name, value) used when the scheme's own variable is unset."""
    no_proxy: str = ""
    """The ``NO_PROXY`` list, comma- or space-separated."""

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ProxyEnv:
        """Pick the variables the way requests does (lower case first)."""

        def pick(name: str) -> tuple[str, str]:
            for var in (name.lower(), name.upper()):
                value = env.get(var, "").strip()
                if value:
                    return var, value
            return "", ""

        return cls(pick("https_proxy"), pick("http_proxy"), pick("all_proxy"),
                   pick("no_proxy")[1])


@dataclass(frozen=True)
class ProxyChoice:
    """The proxy for one URL, and why."""

    url: str
    """The proxy URL (may hold userinfo: never print it; use ``shown``), or "" for direct."""
    why: str
    """Where the choice came from: ``probe.proxy``, a variable name, or the NO_PROXY entry."""

    @property
    def shown(self) -> str:
        """``scheme://host:port`` of the proxy for messages, without userinfo; "direct" if none."""
        return strip_userinfo(self.url) if self.url else "direct"

    def describe(self) -> str:
        """One phrase for ``syncer check``: ``via http://proxy:3128 (HTTPS_PROXY)`` or ``direct
        (NO_PROXY entry .corp)``."""
        if self.url:
            return f"via {self.shown} ({self.why})"
        return f"direct ({self.why})"


def netloc(url: str) -> str:
    """``host[:port]`` of a URL for messages (IPv6 in brackets): never its userinfo, path or
    query; ``?`` when the URL does not parse."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{port}" if port else "")


def strip_userinfo(url: str) -> str:
    """``scheme://host[:port]`` of a proxy URL: never its ``user:password@``, path or query."""
    shown = netloc(url)
    return "<invalid proxy URL>" if shown == "?" else f"{urlsplit(url).scheme.lower()}://{shown}"


def proxy_problem(url: str) -> str:
    """Why ``url`` cannot be a proxy URL ("" when it can). Never quotes the URL (userinfo)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    if parts.scheme.lower() not in _SCHEMES:
        return "must start with http:// or https://"
    if not parts.hostname:
        return "must name a host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must not have a path, query or fragment"
    return ""


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``/``ip``/``cidr`` and the optional port of one NO_PROXY entry."""
    if entry.startswith("["):  # [::1]:5000
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:  # a bare IPv6 address or CIDR has several colons and no port
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def _host_matches(pattern: str, host: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        network = None
    if network is not None:
        try:
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    suffix = pattern.lstrip(".").rstrip(".").lower()
    if not suffix:
        return False
    host = host.rstrip(".").lower()
    return host == suffix or host.endswith("." + suffix)


def no_proxy_match(no_proxy: str, host: str, port: int) -> str:
    """The NO_PROXY entry that sends ``host:port`` direct, or ""."""
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            return entry
        pattern, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if _host_matches(pattern, host.strip("[]")):
            return entry
    return ""


def choose_proxy(url: str, env: ProxyEnv, override: str = "") -> ProxyChoice:
    """The proxy for ``url``: NO_PROXY first, then ``probe.proxy``, then the environment."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    if env.no_proxy and (entry := no_proxy_match(env.no_proxy, parts.hostname or "", port)):
        return ProxyChoice("", f"NO_PROXY entry {entry}")
    if override:
        return ProxyChoice(override, "probe.proxy")
    var, value = env.https if scheme == "https" else env.http
    if not value:
        var, value = env.all
    if value:
        return ProxyChoice(with_scheme(value), var)
    return ProxyChoice("", "no proxy configured")


def with_scheme(value: str) -> str:
    """``proxy:3128`` means ``http://proxy:3128`` to curl and requests alike."""
    return value if "://" in value else "http://" + value
