"""What a targeted re-sync covers: some registries (a Vault change) and/or some targets (a deleted
or drifted secret, a namespace that starts to match), instead of the whole cycle.

Pure. ``Syncer.run_once(scope)`` runs the same Vault read / probe / merge / conditional write
for the subset and returns the same ``Summary``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from syncer.config import RegistrySettings, Settings, TargetSettings

REPAIR_REASONS = ("secret_deleted", "entry_drifted", "namespace_matched")
"""Why a target is re-synced on its own (``Reactor.submit_targets``, ``syncer_repairs_total``)."""
TargetKey = tuple[str, str]
"""(namespace, name) of a Secret target; ("", path) of a file target."""


def target_key(target: TargetSettings) -> TargetKey:
    """The key a scope names ``target`` by."""
    return (target.namespace, target.name or target.file)


@dataclass(frozen=True)
class Scope:
    """A subset of one cycle. Empty sets select nothing."""

    registries: frozenset[str] = frozenset()
    """Registry hosts whose Vault credentials changed: only these are read, probed and merged,
    into every target that manages one of them; the target's other entries are left as they are."""
    targets: frozenset[TargetKey] = frozenset()
    """Targets to re-sync in full (every host they manage), e.g. a deleted or drifted secret."""

    @classmethod
    def of(cls, registries: Iterable[str] = (), targets: Iterable[TargetKey] = ()) -> Scope:
        """A scope from any iterables."""
        return cls(frozenset(registries), frozenset(targets))

    def __bool__(self) -> bool:
        return bool(self.registries or self.targets)

    def __or__(self, other: Scope) -> Scope:
        return Scope(self.registries | other.registries, self.targets | other.targets)

    def selects(self, settings: Settings, target: TargetSettings) -> bool:
        """Whether this scope covers ``target`` (a concrete target, or a selector entry)."""
        if target_key(target) in self.targets:
            return True
        if target.namespace_selector and not target.namespace and any(
                name == target.name for _ns, name in self.targets):
            return True  # a fan-out entry whose namespaces are not resolved yet
        return any(host in self.registries for host in settings.hosts_for(target))

    def hosts(self, settings: Settings, target: TargetSettings) -> frozenset[str]:
        """The hosts to merge into a selected target: all of them when the target itself is
        named, else only the changed registries it manages."""
        hosts = settings.hosts_for(target)
        if target_key(target) in self.targets:
            return frozenset(hosts)
        return frozenset(h for h in hosts if h in self.registries)

    def registries_to_read(self, settings: Settings) -> tuple[RegistrySettings, ...]:
        """The registries a scoped run reads from Vault: the changed ones, plus every host of
        the named targets (in config order, each once)."""
        wanted = set(self.registries)
        for target in settings.targets:
            if self.targets and (target_key(target) in self.targets or target.namespace_selector
                                 and any(name == target.name for _ns, name in self.targets)):
                wanted.update(settings.hosts_for(target))
        return tuple(r for r in settings.registries if r.host in wanted)

    def describe(self) -> str:
        """For logs: counts and a few names (hosts and namespace/name only; no secret material)."""
        parts = []
        if self.registries:
            parts.append("registries " + ",".join(sorted(self.registries)[:5]))
        if self.targets:
            shown = ",".join(f"{ns}/{name}" if ns else name for ns, name in sorted(self.targets)[:5])
            more = f" (+{len(self.targets) - 5})" if len(self.targets) > 5 else ""
            parts.append(f"targets {shown}{more}")
        return "; ".join(parts) or "nothing"
