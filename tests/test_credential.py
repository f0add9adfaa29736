"""The credential type redacts itself everywhere it could be printed."""

from __future__ import annotations

import pickle

from syncer.credential import REDACTED, Credential, VersionedCredential

PASSWORD = "s3ntinel-pa55word"


def test_repr_str_and_format_never_show_the_password() -> None:
    cred = Credential("robot$ci", PASSWORD)
    versioned = VersionedCredential(cred, 4)
    for shown in (repr(cred), str(cred), f"{cred}", f"{cred!r}", repr(versioned), str([cred])):
        assert PASSWORD not in shown and REDACTED in shown
    assert "robot$ci" in repr(cred) and "version=4" in repr(versioned)


def test_fingerprint_tags_the_password_without_revealing_it() -> None:
    one = Credential("u", PASSWORD).fingerprint()
    assert one == Credential("other-user", PASSWORD).fingerprint()  # only the password counts
    assert one != Credential("u", PASSWORD + "x").fingerprint()
    assert len(one) == 8 and PASSWORD not in one


def test_equal_by_value_and_picklable() -> None:
    assert Credential("u", "p") == Credential("u", "p") != Credential("u", "q")
    assert pickle.loads(pickle.dumps(Credential("u", "p"))) == Credential("u", "p")
    assert VersionedCredential(Credential("u", "p"), None).version is None
