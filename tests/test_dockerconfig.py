"""The pure dockerconfig model: parse, merge per host, change detection, round trips."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer import dockerconfig as dc
from syncer.credential import Credential

DOMINO = {"auths": {"quay.io": {"username": "q", "password": "qp", "email": "."}}}


def test_first_merge_keeps_other_hosts_and_unknown_keys() -> None:
    doc = {**DOMINO, "HttpHeaders": {"User-Agent": "x"}, "credsStore": "desktop"}
    merged, changes = dc.merge(doc, {"nvcr.io": (Credential("$oauthtoken", "k"), "")})
    assert merged["auths"]["quay.io"] == DOMINO["auths"]["quay.io"]
    assert merged["HttpHeaders"] == {"User-Agent": "x"} and merged["credsStore"] == "desktop"
    entry = merged["auths"]["nvcr.io"]
    assert entry["username"] == "$oauthtoken" and entry["password"] == "k"
    assert base64.b64decode(entry["auth"]) == b"$oauthtoken:k"
    assert changes[0].change is dc.Change.ADDED
    assert doc["auths"].keys() == {"quay.io"}, "input must not be mutated"


def test_merge_is_idempotent_and_detects_no_change() -> None:
    login = {"nvcr.io": (Credential("$oauthtoken", "k"), "")}
    once, _ = dc.merge(DOMINO, login)
    twice, changes = dc.merge(once, login)
    assert once == twice
    assert [c.change for c in changes] == [dc.Change.UNCHANGED]


def test_rotation_reports_password_change_without_values() -> None:
    once, _ = dc.merge(DOMINO, {"quay.io": (Credential("q", "old-secret"), "")})
    _, changes = dc.merge(once, {"quay.io": (Credential("q", "new-secret"), "")})
    assert changes[0].describe() == "quay.io: updated (password changed) as q"
    assert "secret" not in repr(changes)


def test_existing_email_kept_and_configured_email_written() -> None:
    merged, _ = dc.merge(DOMINO, {"quay.io": (Credential("q", "n"), "")})
    assert merged["auths"]["quay.io"]["email"] == "."
    merged, _ = dc.merge(DOMINO, {"quay.io": (Credential("q", "n"), "ops@example.com")})
    assert merged["auths"]["quay.io"]["email"] == "ops@example.com"


def test_equivalent_key_updated_in_place() -> None:
    doc = {"auths": {"https://nvcr.io/v1/": {"auth": "eDp5"}}}
    merged, _ = dc.merge(doc, {"nvcr.io": (Credential("$oauthtoken", "k"), "")})
    assert list(merged["auths"]) == ["https://nvcr.io/v1/"]


def test_identity_token_dropped_from_managed_entry_only() -> None:
    doc = {"auths": {"a.io": {"identitytoken": "t", "auth": "eDp5"}, "b.io": {"identitytoken": "t"}}}
    merged, _ = dc.merge(doc, {"a.io": (Credential("u", "p"), "")})
    assert "identitytoken" not in merged["auths"]["a.io"]
    assert merged["auths"]["b.io"] == {"identitytoken": "t"}


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'"x"', b"{}", b'{"auths": []}',
                                 b'{"auths": {"a": "b"}}', b"\xff\xfe"])
def test_malformed_documents(raw: bytes) -> None:
    with pytest.raises(dc.MalformedError) as info:
        dc.parse(raw)
    assert raw.decode("latin-1") not in str(info.value) or not raw


def test_serialize_is_one_line_without_trailing_newline() -> None:
    out = dc.serialize({"auths": {"h": {"password": "ä\n"}}})
    assert not out.endswith(b"\n") and b"\n" not in out
    assert json.loads(out) == {"auths": {"h": {"password": "ä\n"}}}


@pytest.mark.parametrize(("key", "norm"), [
    ("https://index.docker.io/v1/", "index.docker.io"), ("Quay.IO", "quay.io"),
    ("harbor.local:8443/v2/", "harbor.local:8443"), ("ghcr.io/Org", "ghcr.io/Org"),
])
def test_normalize_key(key: str, norm: str) -> None:
    assert dc.normalize_key(key) == norm


def test_entry_credential_from_auth_only() -> None:
    auth = base64.b64encode(b"robot$ci:pa:ss").decode()
    cred = dc.entry_credential({"auth": auth})
    assert cred == Credential("robot$ci", "pa:ss")


def test_remove_only_named_hosts() -> None:
    doc = {"auths": {"a.io": {}, "b.io": {}}, "x": 1}
    pruned, removed = dc.remove(doc, ["a.io", "zz.io"])
    assert pruned == {"auths": {"b.io": {}}, "x": 1} and removed == ["a.io"]


# ---------------------------------------------------------------- properties

_text = st.text(min_size=0, max_size=40)
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)
_entry = st.dictionaries(_text, _json, max_size=4)
_doc = st.builds(lambda auths, extra: {**extra, "auths": auths},
                 st.dictionaries(_text, _entry, max_size=5),
                 st.dictionaries(_text.filter(lambda k: k != "auths"), _json, max_size=3))
_logins = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[0-9]{2,5})?", fullmatch=True),
    st.tuples(st.builds(Credential, _text, _text), st.sampled_from(["", "."])), max_size=4)


@given(_doc, _logins)
def test_merge_preserves_unmanaged_hosts_and_keys(doc: dict, logins: dict) -> None:
    merged, _ = dc.merge(doc, logins)
    touched = {dc.find_key(doc, h) for h in logins} | set(logins)
    for key, entry in doc["auths"].items():
        if key not in touched:
            assert merged["auths"][key] == entry
    for key, value in doc.items():
        if key != "auths":
            assert merged[key] == value


@given(_doc, _logins, st.lists(_text, max_size=3))
def test_merge_and_remove_never_mutate_their_input(doc: dict, logins: dict, drop: list) -> None:
    """merge/remove share untouched values with their input instead of deep-copying it, so
    prove the input stays exactly as it was, nested values included."""
    before = copy.deepcopy(doc)
    merged, _ = dc.merge(doc, logins)
    dc.remove(merged, drop + list(logins))
    dc.remove(doc, drop)
    assert doc == before


@given(_doc, _logins)
def test_merge_idempotent_and_valid_json(doc: dict, logins: dict) -> None:
    once, _ = dc.merge(doc, logins)
    twice, changes = dc.merge(once, logins)
    assert once == twice
    assert all(c.change is dc.Change.UNCHANGED for c in changes)
    assert dc.parse(dc.serialize(once)) == once


@given(_doc)
def test_parse_serialize_round_trip(doc: dict) -> None:
    parsed = dc.parse(dc.serialize(doc))
    assert parsed == doc
    assert dc.parse(dc.serialize(parsed)) == parsed


@given(st.builds(Credential, st.text(max_size=300), st.text(max_size=2000)))
def test_hostile_credentials_round_trip_exactly(cred: Credential) -> None:
    merged, _ = dc.merge(dc.empty(), {"h.io": (cred, "")})
    back = dc.parse(dc.serialize(merged))["auths"]["h.io"]
    assert (back["username"], back["password"]) == (cred.username, cred.password)
    if ":" not in cred.username:
        assert dc.entry_credential({"auth": back["auth"]}) == cred
