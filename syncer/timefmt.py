"""Timestamps as Kubernetes writes them: RFC 3339 in UTC. Pure.

``metav1.Time`` (Event timestamps, our ``last-write`` annotations) has whole seconds;
``metav1.MicroTime`` (a Lease's ``renewTime``, an Event's ``eventTime``) has microseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch: float) -> str:
    """``2026-11-29T08:15:00Z`` for an epoch time (fractions dropped)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(epoch: float) -> str:
    """``2026-11-29T08:15:00.123456Z``: a ``MicroTime``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
