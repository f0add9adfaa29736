"""Vault failures as domain outcomes: the hvac exception table (kind for a KV read, kind during a
login, message) and the transport failures, as ``Translator`` reports them. The hvac exceptions
come from hvac's own status mapping (``hvac.utils.raise_for_error``), the transport ones from real
sockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import hvac.exceptions
import hvac.utils
import pytest
import requests

from syncer.vault_errors import Translator, VaultError, VaultErrorKind, is_stale_connection
from tests.support.net import free_port

K = VaultErrorKind
SECRET = "s3ntinel-secret-id"


def translator(**kw: object) -> Translator:
    return Translator(address="https://vault.example.com", namespace="", timeout=0.3,
                      scrub=lambda text: text.replace(SECRET, "***"), **kw)  # type: ignore[arg-type]


def vault_answers(status: int, errors: list[str] | None = None) -> Callable[[], None]:
    def request() -> None:
        hvac.utils.raise_for_error("GET", "https://vault.example.com/v1/x", status, errors=errors)
    return request


def caught(request: Callable[[], object], where: str = "secret/registries/ngc", auth: bool = False,
           t: Translator | None = None) -> VaultError:
    with pytest.raises(VaultError) as info, (t or translator()).translate(where, auth):
        request()
    return info.value


@pytest.mark.parametrize(("status", "kind", "login_kind"), [
    (400, K.INVALID, K.AUTH),
    (401, K.AUTH, K.AUTH),
    (403, K.FORBIDDEN, K.AUTH),   # a 403 at login means the syncer's credentials are bad
    (404, K.MISSING, K.AUTH),
    (429, K.RATE_LIMITED, K.RATE_LIMITED),
    (500, K.SERVER, K.SERVER),
    (503, K.SEALED, K.SEALED),
])
def test_status_kinds_for_reads_and_logins(status: int, kind: K, login_kind: K) -> None:
    assert caught(vault_answers(status)).kind is kind
    assert caught(vault_answers(status), "auth/kubernetes", auth=True).kind is login_kind


def test_messages_name_the_path_namespace_and_scrubbed_detail() -> None:
    t = Translator(address="https://vault.example.com", namespace="team-a", timeout=1,
                   scrub=lambda text: text.replace(SECRET, "***"))
    error = caught(vault_answers(403, [f"permission denied for {SECRET}"]), t=t)
    assert error.path == "secret/registries/ngc"
    assert error.message == ("Vault denied access to secret/registries/ngc in namespace team-a "
                             "(permission denied for ***)")
    assert SECRET not in repr(error) and error.__cause__ is None and error.__suppress_context__


def test_a_missing_path_reads_differently_during_login_and_keeps_its_cause() -> None:
    read = caught(vault_answers(404))
    assert read.message == "no Vault secret at secret/registries/ngc"
    assert isinstance(read.__cause__, hvac.exceptions.InvalidPath)  # the KV reader inspects it
    login = caught(vault_answers(404), "auth/approle", auth=True)
    assert login.message == "no auth method mounted at auth/approle"


def test_an_unlisted_hvac_error_is_a_server_error_named_by_its_class() -> None:
    error = caught(vault_answers(501, ["not initialized"]))  # hvac: VaultNotInitialized
    assert error.kind is K.SERVER
    assert error.message == ("Vault server error for secret/registries/ngc: VaultNotInitialized "
                             "(not initialized)")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and answers nothing: requests times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def plain_text_server() -> Iterator[int]:
    """Answers a TLS hello with plain HTTP: the handshake fails."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_transport_failures_are_unreachable_with_a_reason(silent_server: int,
                                                         plain_text_server: int) -> None:
    refused = caught(lambda: requests.get(f"http://127.0.0.1:{free_port()}/", timeout=1))
    timeout = caught(lambda: requests.get(f"http://127.0.0.1:{silent_server}/", timeout=0.3))
    tls = caught(lambda: requests.get(f"https://127.0.0.1:{plain_text_server}/", timeout=2))
    assert {refused.kind, timeout.kind, tls.kind} == {K.UNREACHABLE}
    assert refused.message.startswith("cannot reach Vault at https://vault.example.com "
                                      "(secret/registries/ngc): ConnectionError")
    assert timeout.message == ("Vault at https://vault.example.com did not answer within 0.3s "
                               "(secret/registries/ngc)")
    assert tls.message.endswith("failed (secret/registries/ngc); check vault.ca_cert")


def test_idempotent_reads_retry_once_on_a_fresh_connection() -> None:
    calls, drops = [], []
    dead = f"http://127.0.0.1:{free_port()}/"

    def request() -> str:
        calls.append(1)
        if len(calls) == 1:
            requests.get(dead, timeout=1)  # a pooled connection Vault already closed
        return "ok"

    assert translator(drop_idle=lambda: drops.append(1)).idempotent("secret/x", request) == "ok"
    assert len(calls) == 2 and len(drops) == 1


def test_idempotent_does_not_retry_a_timeout_or_a_second_failure(silent_server: int) -> None:
    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        requests.get(f"http://127.0.0.1:{silent_server}/", timeout=0.2)

    with pytest.raises(VaultError):
        translator().idempotent("secret/x", slow)
    assert len(calls) == 1  # a retry would only wait again

    def always_dead() -> None:
        calls.append(1)
        requests.get(f"http://127.0.0.1:{free_port()}/", timeout=1)

    calls.clear()
    with pytest.raises(VaultError) as info:
        translator().idempotent("secret/x", always_dead)
    assert len(calls) == 2 and info.value.kind is K.UNREACHABLE


def test_stale_connection_is_only_a_plain_connection_error() -> None:
    assert is_stale_connection(requests.exceptions.ConnectionError())
    assert not is_stale_connection(requests.exceptions.SSLError())
    assert not is_stale_connection(requests.exceptions.ConnectTimeout())
    assert not is_stale_connection(ValueError())


def test_vault_errors_pass_through_untouched() -> None:
    original = VaultError(K.INVALID, "secret/x", "no key 'password' in secret/x")
    with pytest.raises(VaultError) as info, translator().translate("secret/y"):
        raise original
    assert info.value is original
