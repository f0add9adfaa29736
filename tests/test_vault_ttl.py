"""When the Vault token is renewed or replaced: ``TokenClock`` over a fake clock."""

from __future__ import annotations

import math

import pytest

from syncer.vault_ttl import EXPIRY_MARGIN, RENEW_FRACTION, TokenClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unknown_ttl_calls_for_nothing() -> None:
    clock = TokenClock(FakeClock())
    assert clock.remaining() is None and clock.due() is None
    assert clock.describe() == "ttl unknown"


def test_renew_once_a_third_of_the_full_ttl_is_left() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.set(3600, renewable=True, full=3600)
    fake.now += 3600 * (1 - RENEW_FRACTION) - 1
    assert clock.due() is None
    assert clock.remaining() == pytest.approx(3600 * RENEW_FRACTION + 1)
    fake.now += 2
    assert clock.due() == "renew"
    assert clock.describe() == "ttl 3600s"


def test_a_token_that_cannot_be_renewed_calls_for_a_login() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.set(3600, renewable=False, full=3600)
    fake.now += 3000
    assert clock.due() == "relogin"
    clock.set(3600, renewable=True, full=3600)
    clock.exhaust()  # Vault refused to renew, or the max TTL is reached
    fake.now += 3000
    assert clock.due() == "relogin"


def test_nearly_expired_is_expired() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.set(3600, renewable=True, full=3600)
    fake.now += 3600 - EXPIRY_MARGIN
    assert clock.due() == "expired"
    fake.now += 10_000
    assert clock.remaining() == 0.0


def test_short_tokens_use_a_tenth_of_their_ttl_as_margin() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.set(20, renewable=True, full=20)
    fake.now += 17.5  # 2.5 s left: below a third, above a tenth (2 s)
    assert clock.due() == "renew"
    fake.now += 0.6
    assert clock.due() == "expired"


def test_zero_ttl_never_expires() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.set(0, renewable=False, full=0)  # a root token
    fake.now += 10**9
    assert clock.remaining() == math.inf and clock.due() is None
    assert clock.describe() == "no expiry"


def test_lookup_self_answer() -> None:
    fake = FakeClock()
    clock = TokenClock(fake)
    clock.from_lookup({"ttl": 600, "creation_ttl": 3600, "renewable": True})
    assert clock.full == 3600 and clock.renewable
    assert clock.due() == "renew"  # 600 s of 3600 left: below a third
    clock.from_lookup({"ttl": 900, "creation_ttl": 0, "renewable": False})
    assert clock.full == 900  # no creation TTL: the TTL itself is the base
    clock.from_lookup({"ttl": 0, "renewable": False})
    assert clock.remaining() == math.inf


def test_a_renewal_capped_by_max_ttl_is_recognised_and_clear_forgets() -> None:
    clock = TokenClock(FakeClock())
    clock.set(3600, renewable=True, full=3600)
    assert clock.capped(600) and not clock.capped(3000)
    clock.exhaust()
    clock.clear()
    assert clock.remaining() is None and not clock.renew_exhausted and not clock.renewable
