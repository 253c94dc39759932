"""The egress policy (janus_batch.egress) and the worker's http(s) fetch under it.

Loopback listeners stand for internal services: they are refused by default, directly and
through a redirect from an allowed host, and the refusal reads the same whether the port is
closed, serves something else or answers 404. Every connection in these tests goes to
127.0.0.1: name resolution is a fake resolver (no DNS), and the pinning tests replace the
socket layer with a fake one.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx
import pytest
from pydantic import ValidationError

from janus_batch.egress import (
    REFUSED,
    EgressPolicy,
    EgressRefused,
    is_public,
    make_client,
    open_url,
    parse_allow,
)
from janus_batch.settings import Settings
from tests.fixtures.s3 import free_port
from tests.security.listeners import http_listener, tcp_listener
from worker.fetch import FetchError, fetch_uri

PUBLIC = ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]

DENIED = {
    "loopback": "127.0.0.1",
    "loopback-net": "127.254.0.9",
    "loopback6": "::1",
    "private-10": "10.0.0.1",
    "private-172": "172.16.5.4",
    "private-192": "192.168.1.1",
    "unique-local6": "fd12:3456::1",
    "link-local": "169.254.1.1",
    "cloud-metadata": "169.254.169.254",
    "cloud-metadata6": "fd00:ec2::254",
    "link-local6": "fe80::1",
    "cgnat": "100.64.0.1",
    "multicast": "224.0.0.1",
    "multicast-global": "224.0.1.1",
    "multicast6": "ff0e::1",
    "reserved": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "unspecified": "0.0.0.0",
    "unspecified6": "::",
    "this-network": "0.1.2.3",
    "documentation": "192.0.2.1",
    "benchmarking": "198.18.0.1",
    "mapped-loopback": "::ffff:127.0.0.1",
    "mapped-metadata": "::ffff:169.254.169.254",
    "mapped-private": "::ffff:10.0.0.1",
    "nat64-loopback": "64:ff9b::7f00:1",
    "nat64-metadata": "64:ff9b::a9fe:a9fe",
    "nat64-local-use": "64:ff9b:1::a00:1",
    "6to4-private": "2002:c0a8:101::1",
    "teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "ipv4-compatible-loopback": "::7f00:1",
    "ipv4-compatible-metadata": "::169.254.169.254",
    "ipv4-compatible-public": "::8.8.8.8",  # deprecated: never a way out
    "ipv4-translated-loopback": "::ffff:0:7f00:1",
    "ipv4-translated-public": "::ffff:0:808:808",
}


def refused(url: str) -> str:
    """What the submitter reads for any refused URL."""
    return f"cannot fetch {url}: {REFUSED}"


def fake_resolver(table: dict[str, Sequence[str]]) -> tuple[Callable[..., list[str]], list[str]]:
    """A resolver answering from `table` (a list of answers is returned one per call, the
    last one repeated), and the list of names it was asked."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = table[host]
        return list(answers[min(asked.count(host), len(answers)) - 1].split(","))

    return resolve, asked


# --- which addresses ----------------------------------------------------------------------


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", DENIED.values(), ids=DENIED.keys())
def test_internal_addresses_are_denied(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(EgressRefused) as info:
        EgressPolicy(allow_http=True).addresses(address, 443)
    assert str(info.value) == REFUSED  # the text says only that; the reason is for logs
    assert info.value.reason.endswith("is not a public address")


def test_schemes_https_only_unless_allowed() -> None:
    strict, lenient = EgressPolicy(), EgressPolicy(allow_http=True)
    strict.check_url("https://images.example.com/cat.jpg")
    with pytest.raises(EgressRefused, match=REFUSED) as info:
        strict.check_url("http://images.example.com/cat.jpg")
    assert info.value.reason == "only https URLs are fetched"
    lenient.check_url("http://images.example.com/cat.jpg")
    for url in ("file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "https:///x"):
        with pytest.raises(EgressRefused):
            lenient.check_url(url)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "[::1]", "169.254.169.254", "[fd00:ec2::254]", "0.0.0.0", "10.1.2.3",
        "100.64.0.1", "[::ffff:127.0.0.1]", "[64:ff9b::a9fe:a9fe]",
        "2130706433", "0x7f.1", "127.1", "017700000001",  # legacy IPv4 forms, no DNS needed
        "localhost", "LOCALHOST.", "api.localhost",
    ],
)  # fmt: skip
def test_literal_internal_hosts_are_refused_without_dns(host: str) -> None:
    resolve, asked = fake_resolver({})
    policy = EgressPolicy(resolver=resolve)
    with pytest.raises(EgressRefused):
        policy.check_url(f"https://{host}:8443/x.png")
    with pytest.raises(EgressRefused):
        policy.addresses(host, 8443)
    assert asked == []
    policy.check_url("https://93.184.215.14/x.png")  # a public literal is fine


def test_every_resolved_address_is_checked() -> None:
    resolve, asked = fake_resolver(
        {
            "public.test": ["93.184.215.14,2606:4700::6810:84e5"],
            "mixed.test": ["93.184.215.14,10.0.0.7"],  # one bad answer is enough
            "metadata.test": ["169.254.169.254"],
            "v6.test": ["2606:4700::1,fd00:ec2::254"],
            "mapped.test": ["::ffff:127.0.0.1"],
        }
    )
    policy = EgressPolicy(resolver=resolve)
    assert policy.addresses("public.test", 443) == ["93.184.215.14", "2606:4700::6810:84e5"]
    for name in ("mixed.test", "metadata.test", "v6.test", "mapped.test"):
        with pytest.raises(EgressRefused) as info:
            policy.addresses(name, 443)
        assert name in info.value.reason
    with pytest.raises(httpcore.ConnectError, match=r"cannot resolve nowhere\.test"):
        policy.addresses("nowhere.test", 443)
    assert asked == ["public.test", "mixed.test", "metadata.test", "v6.test", "mapped.test",
                     "nowhere.test"]  # fmt: skip


def test_the_allow_list_names_hosts_networks_and_ports() -> None:
    resolve, _ = fake_resolver(
        {"minio.internal": ["10.20.1.5"], "s3.corp": ["10.20.9.9"], "other.corp": ["10.30.0.1"]}
    )
    policy = EgressPolicy(
        resolver=resolve, allow=parse_allow("minio.internal:9000, 10.20.0.0/16 [::1]:8080")
    )
    assert policy.addresses("minio.internal", 9000) == ["10.20.1.5"]
    assert policy.addresses("MINIO.internal.", 9000) == ["10.20.1.5"]
    assert policy.addresses("s3.corp", 443) == ["10.20.9.9"]  # in an allowed network
    assert policy.addresses("10.20.3.4", 80) == ["10.20.3.4"]
    assert policy.addresses("::1", 8080) == ["::1"]
    policy.check_url("https://minio.internal:9000/bucket/key.png")
    for host, port in [("other.corp", 443), ("::1", 8081), ("127.0.0.1", 8080)]:
        with pytest.raises(EgressRefused):
            policy.addresses(host, port)
    with pytest.raises(EgressRefused):
        policy.check_url("https://[::1]:8081/x")


@pytest.mark.parametrize(
    "entry", ["http://minio:9000", "a/b", "[::1", "host:99999", "10.0.0.0/33", "host:port"]
)
def test_malformed_allow_entries_are_errors(entry: str) -> None:
    with pytest.raises(ValueError, match="egress allow entry"):
        parse_allow(entry)
    with pytest.raises(ValidationError, match="egress allow entry"):
        Settings(egress_allow=entry)


def test_policy_from_settings() -> None:
    settings = Settings(egress_allow_http=True, egress_allow="minio.internal:9000,10.0.0.0/8")
    policy = EgressPolicy.from_settings(settings)
    assert policy.allow_http and policy.allow == parse_allow("minio.internal:9000 10.0.0.0/8")
    assert not EgressPolicy.from_settings(Settings()).allow_http


# --- the connection goes to the checked address -------------------------------------------


class FakeStream(httpcore.NetworkStream):
    """A socket that records what is written and answers one canned HTTP response."""

    def __init__(self, log: list[tuple[object, ...]]) -> None:
        self.log = log
        self.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.log.append(("write", buffer))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data, self.reply = self.reply[:max_bytes], self.reply[max_bytes:]
        return data

    def close(self) -> None:
        pass

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self.log.append(("tls", server_hostname))
        raise httpcore.ConnectError("no TLS in this test")


class FakeBackend(httpcore.NetworkBackend):
    """The socket layer replaced: records where it was asked to connect."""

    def __init__(self) -> None:
        self.log: list[tuple[object, ...]] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.log.append(("connect", host, port))
        return FakeStream(self.log)


def test_the_socket_goes_to_the_checked_address_and_dns_is_asked_once() -> None:
    # a rebinding name: public for the first question, loopback for every later one
    resolve, asked = fake_resolver({"rebind.test": ["93.184.215.14", "127.0.0.1"]})
    policy = EgressPolicy(allow_http=True, resolver=resolve)
    backend = FakeBackend()
    with (
        make_client(policy, backend=backend) as client,
        open_url(client, policy, "http://rebind.test/cat.jpg", timeout=5) as response,
    ):
        assert response.read() == b"hi"
    assert asked == ["rebind.test"]  # resolved once: the answer checked is the one used
    assert backend.log[0] == ("connect", "93.184.215.14", 80)
    request = backend.log[1][1]
    assert isinstance(request, bytes) and request.startswith(b"GET /cat.jpg HTTP/1.1\r\n")
    assert b"\r\nHost: rebind.test\r\n" in request  # the URL's host, not the address

    # a new connection asks again and meets the rebound answer: refused before any socket
    with (
        make_client(policy, backend=backend) as client,
        pytest.raises(EgressRefused),
        open_url(client, policy, "http://rebind.test/cat.jpg", timeout=5),
    ):
        pass
    assert [entry for entry in backend.log if entry[0] == "connect"] == [
        ("connect", "93.184.215.14", 80)
    ]


def test_tls_keeps_the_host_name_for_sni_and_the_certificate() -> None:
    resolve, _ = fake_resolver({"images.example.com": ["93.184.215.14"]})
    policy = EgressPolicy(resolver=resolve)
    backend = FakeBackend()
    with (
        make_client(policy, backend=backend) as client,
        pytest.raises(httpx.ConnectError),
        open_url(client, policy, "https://images.example.com/a.png", timeout=5),
    ):
        pass
    assert backend.log == [("connect", "93.184.215.14", 443), ("tls", "images.example.com")]


# --- the worker's fetch against loopback listeners ----------------------------------------


def test_loopback_services_are_refused_and_look_alike() -> None:
    with http_listener({"/image.png": (200, {}, b"internal image")}) as web, tcp_listener() as tcp:
        closed = free_port()
        urls = [
            web.url("/image.png"),  # an internal image
            web.url("/missing"),  # an internal 404
            f"http://127.0.0.1:{tcp.port}/",  # an open port that is not HTTP
            f"http://127.0.0.1:{closed}/",  # a closed port
            f"http://localhost:{web.port}/image.png",
            f"http://[::1]:{web.port}/image.png",
            f"http://0.0.0.0:{web.port}/image.png",
            f"http://2130706433:{web.port}/image.png",
            f"http://[::ffff:127.0.0.1]:{web.port}/image.png",
            web.url("/image.png", scheme="https"),
        ]
        for policy in (EgressPolicy(), EgressPolicy(allow_http=True)):
            for url in urls:
                with pytest.raises(FetchError) as info:
                    fetch_uri(url, egress=policy, max_retries=2, base_delay=0.01)
                assert str(info.value) == refused(url)  # nothing tells the four apart
                assert info.value.permanent and not info.value.storage  # never retried
        with pytest.raises(FetchError, match=REFUSED):  # the default policy is the strictest
            fetch_uri(web.url("/image.png"))
        assert sum(web.hits.values()) == 0 and tcp.accepted == 0


def test_a_redirect_to_another_loopback_port_is_refused() -> None:
    with (
        http_listener({"/secret": (200, {}, b"internal data")}) as internal,
        http_listener({"/image.png": (200, {}, b"allowed image")}) as allowed,
    ):
        routes = allowed.routes
        routes["/go"] = (302, {"Location": internal.url("/secret")}, b"")
        routes["/same-host"] = (301, {"Location": "/image.png"}, b"")
        policy = EgressPolicy(allow_http=True, allow=parse_allow(allowed.host))
        assert fetch_uri(allowed.url("/image.png"), egress=policy) == b"allowed image"
        assert fetch_uri(allowed.url("/same-host"), egress=policy) == b"allowed image"

        targets = [
            internal.url("/secret"),
            f"http://localhost:{internal.port}/secret",
            f"http://[::1]:{internal.port}/secret",
            f"http://0.0.0.0:{internal.port}/secret",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
        ]
        for status, target in zip([302, 307, 308, 303, 301, 302], targets, strict=True):
            routes["/go"] = (status, {"Location": target}, b"")
            with pytest.raises(FetchError) as info:
                fetch_uri(allowed.url("/go"), egress=policy, max_retries=2, base_delay=0.01)
            assert str(info.value) == refused(allowed.url("/go")), target
            assert info.value.permanent
        assert allowed.hits["/go"] == len(targets)  # each tried once: a refusal is not retried
        assert sum(internal.hits.values()) == 0

        both = EgressPolicy(allow_http=True, allow=parse_allow(f"{allowed.host},{internal.host}"))
        routes["/go"] = (302, {"Location": internal.url("/secret")}, b"")
        assert fetch_uri(allowed.url("/go"), egress=both) == b"internal data"  # allow-listed
        assert internal.hits["/secret"] == 1


def test_redirects_are_limited() -> None:
    with http_listener() as web:
        web.routes["/loop"] = (302, {"Location": "/loop"}, b"")
        policy = EgressPolicy(allow_http=True, allow=parse_allow(web.host))
        with pytest.raises(FetchError, match="more than 5 redirects") as info:
            fetch_uri(web.url("/loop"), egress=policy)
        assert info.value.permanent
        assert web.hits["/loop"] == 6  # the first request and five hops
