"""``syncer show --image REF``: which ``auths`` entry kubelet would use for an image, per target.

Kubelet looks the image's normalised repository up in the pull secret's keyring
(syncer.keyring) and tries every matching entry, most specific first; the first is the one a
pull normally uses. For each target this prints that entry, whether the syncer manages it, and
the fallbacks. No credential is shown (the views carry none).

With ``--service-account NS/NAME`` the pull secrets are combined as kubelet combines a pod's:
the ServiceAccount's ``imagePullSecrets`` (copied into every pod that names none of its own by
the ServiceAccount admission plugin), in order, merged into one keyring (``lookup_sources``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from syncer.keyring import lookup, lookup_sources, repository_of
from syncer.show import CELL_LIMIT, TargetView
from syncer.text import json_safe, safe, safe_list


@dataclass
class ImageChoice:
    """What kubelet would pick for the image from one target."""

    target: str
    status: str
    """The target's status (``ok``, ``missing``, ``malformed``, ``error``)."""
    entry: str = ""
    """The ``auths`` key kubelet tries first ("" when none matches: the pull is anonymous)."""
    username: str = ""
    managed: bool = False
    """The syncer manages that entry."""
    fallbacks: list[str] = field(default_factory=list)
    """Further matching keys, tried in this order when the first one fails."""


def choose(views: list[TargetView], image: str) -> tuple[str, list[ImageChoice]]:
    """(normalised repository, one choice per target). Raises ValueError for a bad reference."""
    repository = repository_of(image)
    choices = []
    for view in views:
        choice = ImageChoice(view.target, view.status)
        if view.status == "ok":
            entries = {e.host: e for e in view.entries}
            keys = lookup(entries, repository)
            if keys:
                first = entries[keys[0]]
                choice.entry, choice.username, choice.managed = first.host, first.username, first.managed
                choice.fallbacks = keys[1:]
        choices.append(choice)
    return repository, choices


@dataclass
class AccountChoice:
    """What kubelet would pick for the image in a pod of one ServiceAccount."""

    account: str
    """``namespace/name`` of the ServiceAccount."""
    secrets: list[str] = field(default_factory=list)
    """Its ``imagePullSecrets`` that kubelet can use, in order."""
    skipped: list[str] = field(default_factory=list)
    """Listed secrets kubelet skips (missing, malformed, unreadable), with why."""
    secret: str = ""
    """The secret holding the entry kubelet tries first ("" when none matches)."""
    entry: str = ""
    username: str = ""
    managed: bool = False
    fallbacks: list[str] = field(default_factory=list)
    """Further ``secret: key`` pairs, tried in this order."""


def choose_account(account: str, views: list[TargetView], image: str) -> tuple[str, AccountChoice]:
    """(normalised repository, the combined choice) over the account's pull secrets, in order.
    Raises ValueError for a bad reference."""
    repository = repository_of(image)
    choice = AccountChoice(account)
    usable = []
    for view in views:
        name = view.target.rpartition("/")[2]
        if view.status == "ok":
            choice.secrets.append(name)
            usable.append((name, view))
        else:
            choice.skipped.append(f"{name}: {view.status}")
    entries = {(name, e.host): e for name, view in usable for e in view.entries}
    pairs = lookup_sources([(name, [e.host for e in view.entries]) for name, view in usable], repository)
    if pairs:
        first = entries[pairs[0]]
        choice.secret, choice.entry, choice.username, choice.managed = (
            pairs[0][0], first.host, first.username, first.managed)
        choice.fallbacks = [f"{name}: {key}" for name, key in pairs[1:]]
    return repository, choice


def render_account(image: str, repository: str, c: AccountChoice) -> str:
    """The human lines for a ServiceAccount."""
    lines = [f"image {safe(image)} (kubelet looks up {safe(repository)}) in a pod of serviceaccount "
             f"{safe(c.account)}:",
             f"  pull secrets, in kubelet's order: {safe_list(c.secrets, CELL_LIMIT) or '(none)'}"]
    if c.skipped:
        lines.append(f"  skipped by kubelet: {safe_list(c.skipped, CELL_LIMIT)}")
    if not c.entry:
        lines.append("  no entry matches; kubelet pulls without credentials")
        return "\n".join(lines)
    owner = "managed by the syncer" if c.managed else "NOT managed by the syncer"
    text = (f"  uses {safe(c.entry, CELL_LIMIT)} from secret {safe(c.secret, CELL_LIMIT)} "
            f"(username {safe(c.username, CELL_LIMIT)}; {owner})")
    if c.fallbacks:
        text += f"; then tries {safe_list(c.fallbacks, CELL_LIMIT)}"
    lines.append(text)
    return "\n".join(lines)


def account_json(image: str, repository: str, c: AccountChoice) -> str:
    """``{"image", "repository", "service_account": {...}}``."""
    data = {"image": image, "repository": repository, "service_account": asdict(c)}
    return json_safe(json.dumps(data, indent=2, ensure_ascii=False))


def render(image: str, repository: str, choices: list[ImageChoice]) -> str:
    """The human lines: one per target."""
    lines = [f"image {safe(image)} (kubelet looks up {safe(repository)}):"]
    for c in choices:
        head = f"  {safe(c.target)}: "
        if c.status != "ok":
            lines.append(head + f"{c.status} (see `syncer show` for this target)")
        elif not c.entry:
            lines.append(head + "no entry matches; kubelet pulls without credentials")
        else:
            owner = "managed by the syncer" if c.managed else "NOT managed by the syncer"
            text = (f"uses {safe(c.entry, CELL_LIMIT)} (username {safe(c.username, CELL_LIMIT)}; "
                    f"{owner})")
            if c.fallbacks:
                text += f"; then tries {safe_list(c.fallbacks, CELL_LIMIT)}"
            lines.append(head + text)
    return "\n".join(lines)


def to_json(image: str, repository: str, choices: list[ImageChoice]) -> str:
    """``{"image", "repository", "targets": [...]}``."""
    data = {"image": image, "repository": repository, "targets": [asdict(c) for c in choices]}
    return json_safe(json.dumps(data, indent=2, ensure_ascii=False))
