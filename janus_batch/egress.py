"""The egress policy: which hosts a fetch of a URL a user named may reach. Every such fetch
(worker inputs, http(s) manifests) goes through `open_url`; the API checks URLs with
`check_url` when a job is submitted, and itself fetches none.

    policy = EgressPolicy.from_settings(settings)
    policy.check_url("https://example.com/cat.jpg")   # scheme and literal host, no DNS
    with open_url(make_client(policy), policy, url, timeout=30.0) as response: ...

- Schemes: `https`, and `http` only with JANUS_BATCH_EGRESS_ALLOW_HTTP.
- The host is resolved and EVERY address must be public: not loopback, private, link-local
  (cloud metadata 169.254.169.254, fd00:ec2::254), CGNAT, multicast, reserved, documentation
  or unspecified, nor the IPv4-mapped, NAT64, 6to4 or Teredo form of one; unless
  JANUS_BATCH_EGRESS_ALLOW names the host, or a network holding the address (optionally
  with a port): `minio.internal:9000, 10.20.0.0/16`.
- The resolution happens once, inside the connect (an httpcore network backend), and the
  socket goes to an address that was checked: DNS cannot answer differently in between. The
  URL, Host header and TLS SNI / certificate check keep the host name.
- Redirects are followed here, never by httpx: every hop is checked again, at most
  MAX_REDIRECTS of them.

A refusal is `EgressRefused`, whose text is only "refused by the egress policy" (`reason`,
for logs, says why): a refused target never shows whether it is closed, open or serving.
The operator's own endpoints (JANUS_BATCH_S3_ENDPOINT_URL, the storage) are trusted and not
subject to it; user-supplied `s3://` URIs only ever reach that endpoint.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

if TYPE_CHECKING:
    from janus_batch.settings import Settings

__all__ = [
    "REFUSED",
    "EgressPolicy",
    "EgressRefused",
    "is_public",
    "make_client",
    "open_url",
    "parse_allow",
]

REFUSED = "refused by the egress policy"
MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the host's addresses as text; the system's getaddrinfo by default."""

DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        # IPv4: this network, private, CGNAT, loopback, link-local (cloud metadata),
        # IETF protocol, documentation, 6to4 relay, benchmarking, multicast, reserved
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IPv6: IPv4-compatible (deprecated ::a.b.c.d, also holds :: and ::1), IPv4-translated
        # (SIIT ::ffff:0:a.b.c.d), local-use NAT64, discard, documentation, unique local
        # (fd00:ec2::254, AWS metadata), link-local, site-local, multicast
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
"""Refused whatever Python's `is_global` says (its tables differ between versions)."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


class EgressRefused(Exception):
    """A destination the egress policy does not allow. Its text is only REFUSED; `reason`
    (for the operator's logs) says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSED)
        self.reason = reason


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, NAT64, 6to4, Teredo)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.ipv4_mapped, address.sixtofour]
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def _public_alone(address: IPAddress) -> bool:
    return address.is_global and not any(address in net for net in DENIED_NETWORKS)


def is_public(address: IPAddress) -> bool:
    """Whether `address` (and every IPv4 address it embeds) is publicly routable."""
    inner = _embedded_ipv4(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _public_alone(address.ipv4_mapped)  # ::ffff:a.b.c.d is a.b.c.d
    return _public_alone(address) and all(_public_alone(a) for a in inner)


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one, including the legacy IPv4 forms the system's
    resolver accepts without DNS (`2130706433`, `0x7f.1`, `127.1`); None for a name."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", text) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _normal_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


@dataclass(frozen=True)
class AllowRule:
    """One entry of JANUS_BATCH_EGRESS_ALLOW: a host name or a network, and maybe a port."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def allows_host(self, host: str, port: int) -> bool:
        return self.host is not None and self.host == _normal_host(host) and self._port_ok(port)

    def allows_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or not self._port_ok(port):
            return False
        candidates = [address, *_embedded_ipv4(address)]
        return any(a.version == self.network.version and a in self.network for a in candidates)


_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?)+", re.I)


def _parse_rule(entry: str) -> AllowRule:
    host, port_text = entry, ""
    if entry.startswith("["):  # [v6] or [v6]:port or [v6/len]:port
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"egress allow entry {entry!r}: expected [address]:port")
        port_text = rest[1:]
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"egress allow entry {entry!r}: bad port {port_text!r}")
        port = int(port_text)
    try:
        return AllowRule(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"egress allow entry {entry!r} is not a host name, address or network")
    return AllowRule(host=_normal_host(host), port=port)


@lru_cache(maxsize=32)
def parse_allow(text: str) -> tuple[AllowRule, ...]:
    """The rules of JANUS_BATCH_EGRESS_ALLOW: entries separated by commas or spaces, each a
    host name, an IP address or a CIDR network, with an optional `:port` (`[v6]:port`)."""
    return tuple(_parse_rule(entry) for entry in re.split(r"[,\s]+", text.strip()) if entry)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for `host`, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations a fetch of a user-named URL may reach (see the module's doc)."""

    allow_http: bool = False
    allow: tuple[AllowRule, ...] = ()
    resolver: Resolver = system_resolver
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        """The policy of JANUS_BATCH_EGRESS_ALLOW_HTTP and JANUS_BATCH_EGRESS_ALLOW."""
        return cls(allow_http=settings.egress_allow_http, allow=parse_allow(settings.egress_allow))

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)

    def _host_allowed(self, host: str, port: int) -> bool:
        return any(rule.allows_host(host, port) for rule in self.allow)

    def _address_allowed(self, address: IPAddress, port: int) -> bool:
        return is_public(address) or any(rule.allows_address(address, port) for rule in self.allow)

    def check_url(self, url: str, parts: SplitResult | None = None) -> None:
        """Refuse `url` for what can be told without DNS: its scheme, a missing host, a
        literal address that is not public, a loopback name. EgressRefused otherwise.
        `parts`: `urlsplit(url)`, when the caller has it already (a million-row source)."""
        try:
            parts = parts if parts is not None else urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError as exc:
            raise EgressRefused(f"malformed URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise EgressRefused(f"only {' and '.join(self.schemes)} URLs are fetched")
        host = parts.hostname or ""
        if not host:
            raise EgressRefused("the URL has no host")
        if (reason := _literal_refusal(self, host, port)) is not None:
            raise EgressRefused(reason)

    def _check_literal(self, host: str, port: int) -> None:
        if self._host_allowed(host, port):
            return
        name = _normal_host(host)
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            raise EgressRefused(f"{host} is a loopback name")
        address = literal_address(name)
        if address is not None and not self._address_allowed(address, port):
            raise EgressRefused(f"{address} is not a public address")

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses a connection to `host:port` may use, all checked: an allow-listed
        host's addresses as resolved, else every address must be public or allow-listed.
        EgressRefused if any is not; httpcore.ConnectError if the name does not resolve."""
        if self._host_allowed(host, port):
            return list(self._resolve(host, port))
        self._check_literal(host, port)
        literal = literal_address(_normal_host(host))
        found = [literal] if literal is not None else [
            ipaddress.ip_address(a.partition("%")[0]) for a in self._resolve(host, port)
        ]  # fmt: skip
        for address in found:
            if not self._address_allowed(address, port):
                raise EgressRefused(f"{host} resolves to {address}, not a public address")
        return [str(a) for a in found]

    def _resolve(self, host: str, port: int) -> Sequence[str]:
        try:
            found = self.resolver(_normal_host(host), port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not found:
            raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        return found


class _VettingBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy checked, resolving the host itself (once)."""

    def __init__(self, policy: EgressPolicy, backend: httpcore.NetworkBackend) -> None:
        self._policy = policy
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in self._policy.addresses(host, port):
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # try the host's next address
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise EgressRefused("unix sockets are never reached")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _PolicyTransport(httpx.HTTPTransport):
    """httpx's own transport on a connection pool whose network backend is the policy's.
    No proxy from the environment: a proxy would make the checked address the proxy's."""

    def __init__(
        self, policy: EgressPolicy, limits: httpx.Limits, backend: httpcore.NetworkBackend
    ) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_VettingBackend(policy, backend),
        )


def make_client(
    policy: EgressPolicy,
    *,
    max_connections: int = 64,
    backend: httpcore.NetworkBackend | None = None,
) -> httpx.Client:
    """An httpx client that connects only where `policy` allows (`backend` replaces the
    socket layer, for tests). Use it through `open_url`, which follows redirects."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=16)
    transport = _PolicyTransport(policy, limits, backend or httpcore.SyncBackend())
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "janus-batch"},
    )


@contextmanager
def open_url(
    client: httpx.Client, policy: EgressPolicy, url: str, *, timeout: float
) -> Iterator[httpx.Response]:
    """GET `url` as a streamed response, following up to `policy.max_redirects` redirects,
    each hop checked by the policy (EgressRefused); httpx.TooManyRedirects beyond that."""
    for _ in range(policy.max_redirects + 1):
        policy.check_url(url)
        request = client.build_request("GET", url, timeout=timeout)
        response = client.send(request, stream=True)
        location = response.headers.get("location")
        if response.status_code not in REDIRECT_CODES or not location:
            break
        response.close()
        url = str(response.url.join(location))
    else:
        raise httpx.TooManyRedirects(
            f"more than {policy.max_redirects} redirects", request=response.request
        )
    try:
        yield response
    finally:
        response.close()


@lru_cache(maxsize=4096)
def _literal_refusal(policy: EgressPolicy, host: str, port: int) -> str | None:
    """Why `policy` refuses `host:port` without DNS, or None: remembered per host, since a
    dataset names the same few hosts in millions of rows (DNS-free, so nothing goes stale)."""
    try:
        policy._check_literal(host, port)
    except EgressRefused as exc:
        return exc.reason
    return None
