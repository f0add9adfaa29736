"""One target error for both stores (syncer.target_errors): kinds are a reporting contract."""

from __future__ import annotations

import pytest

from syncer.filetarget import FileStore
from syncer.kube_api import KubeError
from syncer.target_errors import TargetError, TargetErrorKind

CONTRACT = ["unauthorized", "forbidden", "not_found", "conflict", "already_exists", "invalid",
            "rate_limited", "expired", "server_error", "unreachable", "timeout", "wrong_type",
            "too_large", "io_error"]
"""The ``reason`` values of failed targets in summaries, Events and metrics (CHANGELOG on change)."""


def test_kind_values_are_the_documented_reasons() -> None:
    assert [k.value for k in TargetErrorKind] == CONTRACT


def test_message_names_what_and_which_and_why() -> None:
    err = TargetError(TargetErrorKind.CONFLICT, "apps/pull", "changed since read", what="secret")
    assert str(err) == "secret apps/pull: conflict: changed since read"
    assert (err.kind, err.ref) == (TargetErrorKind.CONFLICT, "apps/pull")


def test_a_kubernetes_error_is_a_target_error() -> None:
    """The engine catches one error type, whichever store failed."""
    assert issubclass(KubeError, TargetError)


def test_a_directory_in_place_of_config_json_is_a_file_target_error(tmp_path) -> None:
    (tmp_path / "config.json").mkdir()
    with pytest.raises(TargetError) as info:
        FileStore().read(str(tmp_path / "config.json"))
    assert not isinstance(info.value, KubeError)
    assert info.value.kind is TargetErrorKind.WRONG_TYPE
    assert str(info.value).startswith(f"file {tmp_path / 'config.json'}: wrong_type")


def test_an_os_error_without_a_closer_kind_is_io_error(tmp_path) -> None:
    """ENOTDIR (a regular file where a directory should be) has no kind of its own."""
    (tmp_path / "home").write_text("not a directory")
    with pytest.raises(TargetError) as info:
        FileStore().read(str(tmp_path / "home" / "config.json"))
    assert info.value.kind is TargetErrorKind.IO_ERROR
    assert "home" in str(info.value)
