"""Credential files and CA bundles: only bounded regular files are read; a CA that cannot be
loaded names its config key at start-up."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import pytest

from syncer.secretfiles import (
    SecretFileError,
    load_ca,
    read_secret_bytes,
    read_secret_file,
    readable_by_others,
)


def test_reads_a_regular_file_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"  s.token-value\n")
    assert read_secret_file(str(path)) == "s.token-value"
    assert read_secret_bytes(str(path)) == b"  s.token-value\n"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, str(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], SecretFileError) and outcome[0].strerror == "not a regular file"


def _capture(outcome: list[BaseException], path: str) -> None:
    try:
        read_secret_file(path)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        outcome.append(exc)


def test_oversized_files_and_devices_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(SecretFileError, match="larger than 100 bytes"):
        read_secret_file(str(big), limit=100)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret_file("/dev/zero")
    (tmp_path / "exact").write_bytes(b"y" * 100)
    assert read_secret_file(str(tmp_path / "exact"), limit=100) == "y" * 100


def test_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("k")
    path.chmod(0o600)
    assert not readable_by_others(str(path))
    path.chmod(0o640)
    assert readable_by_others(str(path))


def test_load_ca_adds_the_bundle_to_a_verifying_context(ca_file: str) -> None:
    context = load_ca(ca_file, "probe.ca_cert")
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert any("trustme" in str(c.get("subject")) for c in context.get_ca_certs())
    shared = ssl.create_default_context()
    assert load_ca(ca_file, "vault.ca_cert", shared) is shared  # the probe's transport may share one


def test_a_bad_ca_names_its_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for path in (str(junk), str(tmp_path / "missing.pem")):
        with pytest.raises(ValueError, match=r"^vault\.ca_cert '.*' cannot be loaded as PEM"):
            load_ca(path, "vault.ca_cert")
