"""What every target has, whatever holds it: the store protocol, the document, ownership, selectors.

A target is a Secret (``syncer.kube.SecretStore``) or a docker config file
(``syncer.filetarget.FileStore``). Both implement ``TargetStore`` and hand out snapshots that
implement ``Snapshot``, so the engine, ``check``, ``show`` and ``history`` handle a target one
way; ``TargetStores.of`` is the one place that picks the store for a target.

The ownership annotations are the syncer's bookkeeping on a target (annotations of a Secret,
the ``.NAME.syncer-state`` sibling of a file): which hosts it manages, the KV versions it wrote
and when it last wrote. They carry no secret material.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from syncer import dockerconfig, drift
from syncer.config import TargetSettings
from syncer.target_errors import TargetError

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "registry-syncer.io/"
MANAGED_HOSTS = ANNOTATION_PREFIX + "managed-hosts"
"""Annotation listing the hosts this syncer manages in a secret (for drift and prune)."""
LAST_WRITE = ANNOTATION_PREFIX + "last-write"
"""Annotation with the time of the syncer's last write to the secret."""
VAULT_VERSIONS = ANNOTATION_PREFIX + "vault-versions"
"""Annotation with the KV v2 version last written per host (the drift basis; no secret material)."""
ROLLED_BACK = ANNOTATION_PREFIX + "rolled-back"
"""Annotation with the time of the last rollback."""
COMPARED = (MANAGED_HOSTS, VAULT_VERSIONS)
"""The annotations whose change alone is worth a write (the time of the last write is not)."""


class Snapshot(Protocol):
    """A target as read, with what a conditional write back needs."""

    @property
    def ref(self) -> str:
        """``namespace/name`` or the file path, for logs and reports."""

    @property
    def version(self) -> str:
        """The version the next write is conditional on (resourceVersion, file token)."""

    @property
    def payload(self) -> bytes | None:
        """The docker config as stored (None: a Secret without the key)."""

    @property
    def previous(self) -> bytes | None:
        """The content before the syncer's last write, if kept (for rollback)."""

    @property
    def annotations(self) -> Mapping[str, str]:
        """The target's annotations (ownership, see this module)."""

    def document(self) -> dockerconfig.Document:
        """``payload`` as a document, by the rules of its store. Raises MalformedError."""

    def parse(self, content: bytes) -> dockerconfig.Document:
        """Other content (a kept previous one) by the same rules. Raises MalformedError."""


S = TypeVar("S", bound=Snapshot)


class TargetStore(Protocol[S]):
    """Reads and conditionally writes targets of one kind. ``dry_run`` is honoured in the store's
    lowest write functions. Failures raise TargetError."""

    @property
    def what(self) -> str:
        """``secret`` or ``file``: what a target of this store is called in reports."""

    @property
    def dry_run(self) -> bool:
        """True when nothing is written."""

    @property
    def emits_events(self) -> bool:
        """True when a target is an API object that Events can name (a Secret; a file is not)."""

    def read_target(self, target: TargetSettings) -> S | None:
        """The target as it is now, or None when it does not exist."""

    def prefetch(self, targets: Sequence[TargetSettings], *,
                 lists: bool = True) -> Mapping[str, S | TargetError | None]:
        """Targets read in bulk where the store can (by target ref), from a cache or (``lists``)
        with LISTs; the rest is left out."""

    def update(self, snapshot: S, payload: bytes, annotations: Mapping[str, str],
               previous: bytes | None = None) -> None:
        """Write ``payload`` and set ``annotations`` (others kept) if the target is still at the
        snapshot's version, else raise a CONFLICT; ``previous`` is kept for rollback."""

    def create(self, target: TargetSettings, payload: bytes, annotations: Mapping[str, str]) -> None:
        """Create the target; one that exists by now raises a CONFLICT or ALREADY_EXISTS."""

    def serialize(self, doc: dockerconfig.Document) -> bytes:
        """The stored form of ``doc``."""


class TargetStores:
    """The Secret store and the file store, and which one holds a target."""

    def __init__(self, secrets: TargetStore[Any], files: TargetStore[Any]) -> None:
        self.secrets = secrets
        self.files = files

    def of(self, target: TargetSettings) -> TargetStore[Any]:
        """The store that holds ``target``."""
        return self.files if target.file else self.secrets

    def split(self, targets: Iterable[TargetSettings]) -> tuple[list[TargetSettings], list[TargetSettings]]:
        """``targets`` as (those the Secret store holds, those the file store holds)."""
        chosen = list(targets)
        return ([t for t in chosen if self.of(t) is self.secrets],
                [t for t in chosen if self.of(t) is self.files])

    def prefetch(self, targets: Sequence[TargetSettings], *,
                 lists: bool = True) -> dict[str, Snapshot | TargetError | None]:
        """Every store's bulk read of its own targets, by target ref."""
        found: dict[str, Snapshot | TargetError | None] = {}
        for store in (self.secrets, self.files):
            found.update(store.prefetch([t for t in targets if self.of(t) is store], lists=lists))
        return found


def document(snapshot: Snapshot | None) -> dockerconfig.Document:
    """The document a target holds now (empty if it does not exist). Raises MalformedError."""
    return dockerconfig.empty() if snapshot is None else snapshot.document()


# --------------------------------------------------------------------------- ownership


def owned(annotations: Mapping[str, str]) -> tuple[list[str], list[str], dict[str, int]]:
    """(managed hosts, annotation entries ignored as no host name, KV versions recorded)."""
    managed, ignored = drift.split_hosts(annotations.get(MANAGED_HOSTS, ""))
    return managed, ignored, drift.parse_versions(annotations.get(VAULT_VERSIONS, ""))


def ownership(managed: Iterable[str], recorded: Mapping[str, int], merged: dockerconfig.Document,
              versions: Mapping[str, int | None], pruned: Iterable[str], stamp: str) -> dict[str, str]:
    """The ownership annotations after a write of ``merged``: the hosts managed before plus the
    hosts written (``versions``: their KV versions), minus the pruned ones, and ``stamp``."""
    written = {h for h in versions if dockerconfig.find_key(merged, h)}
    hosts = (set(managed) | written) - set(pruned)
    kept = {h: v for h, v in recorded.items() if h in hosts}
    kept.update({h: v for h in written if (v := versions[h]) is not None})
    return {MANAGED_HOSTS: ",".join(sorted(hosts)), VAULT_VERSIONS: drift.format_versions(kept),
            LAST_WRITE: stamp}


def same_ownership(before: Mapping[str, str], after: Mapping[str, str]) -> bool:
    """True when a write would change no compared annotation."""
    return all(before.get(k, "") == after[k] for k in COMPARED)


# --------------------------------------------------------------------------- selectors


class NamespaceLister(Protocol):
    """Lists the namespaces a label selector matches (``syncer.kube.FanOut``)."""

    def namespaces(self, selector: str) -> list[str]:
        """Sorted names of the matching namespaces. Raises TargetError."""


Expansion = list[TargetSettings] | TargetError
"""The concrete targets of one configured target, or why its namespaces could not be listed."""


def expand(targets: Iterable[TargetSettings],
           lister: NamespaceLister) -> list[tuple[TargetSettings, Expansion]]:
    """Each configured target with its concrete targets, in order: a fixed target (or a file)
    is its own; a selector target has one per matching namespace. One namespace LIST per
    distinct selector; a failed one is given to each of its targets."""
    listed: dict[str, list[str] | TargetError] = {}
    expanded: list[tuple[TargetSettings, Expansion]] = []
    for target in targets:
        selector = target.namespace_selector
        if not selector or target.namespace:
            expanded.append((target, [target]))
            continue
        if selector not in listed:
            try:
                listed[selector] = lister.namespaces(selector)
            except TargetError as exc:
                listed[selector] = exc
        names = listed[selector]
        expanded.append((target, names if isinstance(names, TargetError)
                         else [target.in_namespace(ns) for ns in names]))
    return expanded


def resolve(expanded: Iterable[tuple[TargetSettings, Expansion]]
            ) -> tuple[list[TargetSettings], list[tuple[TargetSettings, TargetError]]]:
    """The concrete targets of a cycle, each secret once, plus the selector targets whose
    namespaces could not be listed (logged). A fixed target wins over a selector target for the same
    namespace/name, and the first selector over later ones.

    A namespace that stops matching is simply no longer served: its secret is left in place,
    because a label edit must not break image pulls of running workloads there.
    """
    pairs = list(expanded)
    fixed = {(t.namespace, t.name) for t, _ in pairs if not t.namespace_selector}
    seen: set[tuple[str, str]] = set()
    resolved: list[TargetSettings] = []
    failed: list[tuple[TargetSettings, TargetError]] = []
    for target, concrete in pairs:
        if isinstance(concrete, TargetError):
            if not any(exc is concrete for _, exc in failed):  # once per selector
                log.error("namespace selector %r: %s", target.namespace_selector, concrete)
            failed.append((target, concrete))
        elif not target.namespace_selector:
            resolved.append(target)
        else:
            for t in concrete:
                key = (t.namespace, t.name)
                if key not in fixed and key not in seen:
                    seen.add(key)
                    resolved.append(t)
    return resolved, failed
