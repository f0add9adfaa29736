"""LeaseElector against the Kubernetes API test server, on a fake monotonic clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncer.config import LeaderElectionSettings
from syncer.kube_api import Api
from syncer.leader import LeaseElector
from tests.support.kube_fixtures import ADMIN_TOKEN, kube_client

NS = "syncer"
LEASE = "syncer-lease"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(kube: Any, tmp_path: Path, identity: str, clock: Clock) -> LeaseElector:
    kubeconfig = kube.write_kubeconfig(tmp_path / f"kc-{identity}", ADMIN_TOKEN)
    api = Api(kube_client(kubeconfig), timeout=5)
    settings = LeaderElectionSettings(enabled=True, namespace=NS, name=LEASE, identity=identity,
                                      lease_duration=10.0, renew_period=2.0)
    return LeaseElector(api, settings, clock=clock)


def test_restarted_holder_with_the_same_identity_leads_again(kube: Any, tmp_path: Path) -> None:
    """A container restart keeps POD_NAME: the new process finds the lease in its own name and must
    lead, not renew it forever as a non-leader (then nobody would ever sync)."""
    kube.add_namespace(NS)
    clock = Clock()
    first = elector(kube, tmp_path, "pod-a", clock)
    assert first.step()
    restarted = elector(kube, tmp_path, "pod-a", clock)  # same identity, fresh process
    clock.now += 1
    assert restarted.step() and restarted.is_leader
    lease = kube.get_object("leases", NS, LEASE)
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseTransitions"] == 0


def test_leader_that_lapsed_then_renews_its_own_lease_leads_again(kube: Any, tmp_path: Path) -> None:
    kube.add_namespace(NS)
    clock = Clock()
    a = elector(kube, tmp_path, "a", clock)
    assert a.step()
    kube.add_fault(lambda r: r.resource == "leases", status=503, times=None)
    clock.now += 11  # no renewal within lease_duration: a steps down
    assert not a.step()
    kube.clear_faults()
    clock.now += 1
    assert a.step(), "nobody took the lease over; a renews it and must lead again"


def test_expiry_is_counted_from_before_the_renewal_request(kube: Any, tmp_path: Path) -> None:
    """A standby starts its expiry clock when it sees the renewed record, which is after the
    request was sent: the leader must count from the send, or it leads a little too long."""
    kube.add_namespace(NS)
    clock = Clock()
    a = elector(kube, tmp_path, "a", clock)
    assert a.step()
    sent = clock.now = clock.now + 5
    kube.before(lambda r: r.resource == "leases" and r.verb == "patch",
                lambda: setattr(clock, "now", clock.now + 3))  # a slow renewal
    assert a.step()
    clock.now = sent + 10
    assert not a.is_leader


def test_no_step_takes_the_lease_back_after_release(kube: Any, tmp_path: Path) -> None:
    """Shutdown releases the lease; a renewal step that runs afterwards must not win it back,
    or failover would wait a whole lease duration."""
    kube.add_namespace(NS)
    clock = Clock()
    a = elector(kube, tmp_path, "a", clock)
    assert a.step()
    a.release()
    assert kube.get_object("leases", NS, LEASE)["spec"].get("holderIdentity") in (None, "")
    kube.reset_requests()
    clock.now += 1
    assert not a.step() and not a.is_leader
    assert kube.count(resource="leases") == 0, "a released elector sends nothing"
    b = elector(kube, tmp_path, "b", clock)
    assert b.step(), "the standby takes over at once"
