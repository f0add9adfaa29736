"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never sync at once.

Like client-go's leaderelection: expiry is judged by *our* clock from the moment we
last saw the lease record change, never by comparing the holder's timestamps with
our clock, so clock skew between nodes cannot hand the lease to two replicas.
Every write carries the resourceVersion it was based on; a 409 means someone else
won the race.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from syncer.config import LeaderElectionSettings
from syncer.kube_api import MERGE_PATCH, TRANSPORT_ERRORS, Api, api_path, translate
from syncer.text import rfc3339_micro

log = logging.getLogger(__name__)
TIMEOUT = 5.0
"""Seconds per Lease request: short, so a hung API server cannot outlast the lease."""


class LeaseElector:
    """One step at a time (``step()``), driven by the scheduler every ``renew_period``."""

    def __init__(self, api: Api, settings: LeaderElectionSettings,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.api = api
        self.settings = settings
        self.identity = settings.identity
        self.clock = clock
        self.wall = wall
        self.ref = f"{settings.namespace}/{settings.name}"
        self._leader = False
        self._last_renew = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        # step() and release() never interleave, and nothing re-takes the lease after release():
        # a step already running when shutdown starts would otherwise win it back.
        self._lock = threading.Lock()
        self._released = False

    @property
    def is_leader(self) -> bool:
        """True while we hold a lease renewed within its duration."""
        return self._leader and self.clock() - self._last_renew < self.settings.lease_duration

    def step(self) -> bool:
        """Acquire or renew once. Errors keep the previous state until the lease would expire."""
        with self._lock:
            if self._released:
                return False
            return self._step_locked()

    def _step_locked(self) -> bool:
        try:
            self._step()
        except TRANSPORT_ERRORS as exc:
            log.warning("leader election on lease %s: %s", self.ref, translate(exc, self.ref, "lease"))
        if self._leader and not self.is_leader:
            log.warning("lost leadership of lease %s (not renewed in time)", self.ref)
            self._leader = False
        return self.is_leader

    def _step(self) -> None:
        lease = self._read()
        if lease is None:
            self._create()
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            if self._leader:
                log.warning("lease %s is now held by %s", self.ref, holder)
            self._leader = False
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        self._write(lease, acquired=holder != self.identity, transitions=transitions)

    def _read(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self.api.get(self._path(self.settings.name), timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    def _path(self, name: str = "") -> str:
        return api_path("leases", self.settings.namespace, name, group="coordination.k8s.io")

    def _spec(self, acquired: bool, transitions: int) -> dict[str, Any]:
        now = rfc3339_micro(self.wall())
        spec: dict[str, Any] = {"holderIdentity": self.identity, "renewTime": now,
                                "leaseDurationSeconds": int(self.settings.lease_duration),
                                "leaseTransitions": transitions}
        if acquired:
            spec["acquireTime"] = now
        return spec

    def _create(self) -> None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
                "spec": self._spec(acquired=True, transitions=0)}
        sent = self.clock()
        try:
            self.api.request("POST", self._path(), body=body, timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:  # someone else created it first
                return
            raise
        self._renewed(sent)

    def _write(self, lease: dict[str, Any], acquired: bool, transitions: int) -> None:
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": self._spec(acquired, transitions)}
        sent = self.clock()
        try:
            self._patch(body)
        except ApiException as exc:
            if exc.status == 409:
                return  # lost the race; look again next step
            raise
        self._renewed(sent)

    def _patch(self, body: dict[str, Any]) -> None:
        self.api.request("PATCH", self._path(self.settings.name), body=body, content_type=MERGE_PATCH,
                         timeout=TIMEOUT)

    def _renewed(self, sent: float) -> None:
        """A write in our name succeeded: we lead until ``sent`` + lease duration.

        Counted from before the request, since standbys start their clocks on seeing the record,
        which is later. Leads even if the lease was already ours (renewed after lapsing, or a
        restarted container with the same POD_NAME): renewing it without leading would block
        every replica.
        """
        if not self._leader:
            log.info("acquired lease %s as %s", self.ref, self.identity)
        self._leader, self._last_renew = True, sent

    def release(self) -> None:
        """Hand the lease back (empty holder, 1 s duration) so a standby takes over at once."""
        with self._lock:
            self._released = True
            if self._leader:
                self._leader = False
                self._hand_back()

    def _hand_back(self) -> None:
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                             "renewTime": rfc3339_micro(self.wall())}}
            self._patch(body)
            log.info("released lease %s", self.ref)
        except TRANSPORT_ERRORS as exc:
            log.warning("could not release lease %s: %s", self.ref, translate(exc, self.ref, "lease"))
