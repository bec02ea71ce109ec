"""The network policy: its three modes, allowlist entries and decisions.

Modes:

* ``none`` (default): an empty network namespace. The syscall filter
  refuses inet sockets; ``allowed_socket_families`` tells it which.
* ``loopback``: the same empty namespace, but the program may create inet
  sockets and listen/connect on its own loopback. The host's loopback is a
  different interface in a different namespace and stays unreachable.
* ``allow``: the empty namespace plus one way out: the host-side proxy,
  reachable at ``127.0.0.1:PROXY_PORT`` inside the sandbox, which lets
  through only connections that an allow entry names.

Allow entries (``Rule``), with an optional ``:port``:

* ``pypi.org``: that name exactly;
* ``*.example.org``: any name ending in ``.example.org`` (not
  ``example.org`` itself);
* ``127.0.0.1``, ``[::1]``, ``10.0.0.0/8``: addresses. Requests for an IP
  literal are allowed only by an address entry, and so is a name that
  resolves to a loopback, private, link-local or otherwise non-public
  address (DNS rebinding): the address must be named explicitly.

``hosts`` pins names to addresses without DNS, like ``curl --resolve``; a
pinned name still needs an allow entry, and its addresses pass the same
non-public check.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# Port of the proxy's listener inside the sandbox's own network namespace.
PROXY_PORT = 3128
PROXY_HOST = "127.0.0.1"
# Names and addresses that stay inside the sandbox (its own loopback).
NO_PROXY = "localhost,127.0.0.1,::1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class NetworkMode(str, enum.Enum):
    NONE = "none"
    LOOPBACK = "loopback"
    ALLOW = "allow"


def allowed_socket_families(mode: NetworkMode | str) -> frozenset[int]:
    """Socket address families the syscall filter should let ``socket()`` make.

    For the syscall filter (``linux/seccomp.py``): every family not returned
    is refused with EAFNOSUPPORT, and named in the result. ``AF_NETLINK`` is included in
    every mode because glibc's getaddrinfo asks NETLINK_ROUTE for the
    interface list; in the sandbox's own namespace it shows only ``lo``. The
    filter may narrow it to protocol NETLINK_ROUTE (0).

    Args:
        mode: the network mode of the policy.

    Returns:
        The allowed ``socket.AF_*`` values.
    """
    mode = NetworkMode(mode)
    families = {socket.AF_UNIX, socket.AF_NETLINK}
    if mode is not NetworkMode.NONE:
        # loopback: the program's own listeners; allow: the proxy is reached
        # over TCP on the sandbox's loopback.
        families |= {socket.AF_INET, socket.AF_INET6}
    return frozenset(families)


def normalize_name(text: str) -> str:
    """A host name in the form rules compare: lower case, ASCII, no final dot.

    Raises:
        ValueError: not a syntactically valid DNS name.
    """
    name = text.removesuffix(".")
    if not name:
        raise ValueError("empty host name")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise ValueError(
                f"{text!r} is not a valid international domain name"
            ) from err
    name = name.lower()
    if len(name) > 253:
        raise ValueError(f"{text!r} is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"{text!r} has an empty label")
        if not _LABEL.match(label):
            raise ValueError(f"{text!r}: label {label!r} is not a valid DNS label")
    if labels[-1].isdigit():
        # 10.1, 2130706433, 1.2.3.999: numeric forms that resolvers read as
        # addresses, never names.
        raise ValueError(f"{text!r} is neither an IP address nor a host name")
    return name


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (``[...]`` allowed for IPv6), IPv4-mapped IPv6 unmapped.

    Returns None when the text is not an IP literal.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return None  # scoped IPv6 addresses never name a remote host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _unmap(address)


def _unmap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_class(address: IPAddress) -> str | None:
    """Why an address is not public ("loopback", "private", ...), or None."""
    address = _unmap(address)
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class Rule:
    """One parsed allow entry."""

    text: str
    name: str | None = None  # exact name, or the suffix after "*."
    wildcard: bool = False
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> Rule:
        """Parse an allow entry.

        Raises:
            ValueError: with a message that quotes the entry and says what is
                wrong with it.
        """
        if not isinstance(entry, str):
            raise ValueError(f"{entry!r} is not a string")
        text = entry
        if not text or text != text.strip():
            raise ValueError(f"{entry!r}: empty or surrounded by spaces")
        if "://" in text or text.startswith("//"):
            raise ValueError(
                f"{entry!r} is a URL; give the host only, e.g. 'pypi.org' or 'pypi.org:443'"
            )
        host, port = _split_port(text, entry)
        if "/" in host:
            return cls(text=entry, network=_parse_network(host, entry), port=port)
        address = parse_address(host)
        if address is not None:
            if not host.startswith("["):
                _check_unambiguous(host, entry)
            return cls(text=entry, network=ipaddress.ip_network(address), port=port)
        if host.startswith("[") or ":" in host:
            raise ValueError(f"{entry!r}: {host!r} is not a valid IPv6 address")
        wildcard = False
        if "*" in host:
            if not host.startswith("*.") or "*" in host[2:]:
                raise ValueError(
                    f"{entry!r}: a wildcard must be the whole first label, as in '*.example.org'"
                )
            wildcard = True
            host = host[2:]
        try:
            name = normalize_name(host)
        except ValueError as err:
            raise ValueError(f"{entry!r}: {err}") from None
        return cls(text=entry, name=name, wildcard=wildcard, port=port)

    def matches_name(self, name: str, port: int) -> bool:
        if self.name is None or (self.port is not None and self.port != port):
            return False
        if self.wildcard:
            return name.endswith("." + self.name)
        return name == self.name

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return _unmap(address) in self.network


def _split_port(text: str, entry: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{entry!r}: '[' without ']'")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{entry!r}: unexpected {rest!r} after the address")
        return host, _port(rest[1:], entry)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, entry)
    return text, None  # no port, or a bare IPv6 address (no port possible)


def _parse_network(host: str, entry: str) -> IPNetwork:
    """The network of an ``address/prefix`` entry, refusing what it cannot mean."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    first, _, prefix = bare.partition("/")
    address = parse_address(first)
    if address is None:
        raise ValueError(
            f"{entry!r} has a path; give the host only, e.g. 'pypi.org' or 'pypi.org:443'"
        )
    if ":" in prefix and address.version == 6:
        bits, _, port = prefix.partition(":")
        raise ValueError(
            f"{entry!r}: an IPv6 network with a port needs brackets: write "
            f"'[{first}/{bits}]:{port}'"
        )
    longest = address.max_prefixlen
    if not prefix.isdigit() or int(prefix) > longest:
        raise ValueError(
            f"{entry!r}: prefix length {prefix!r} is not a number from 0 to {longest} "
            f"(IPv{address.version})"
        )
    try:
        return ipaddress.ip_network(bare, strict=True)
    except ValueError:
        # host bits set: 1.2.3.4/8 would silently widen to 1.0.0.0/8
        meant = ipaddress.ip_network(bare, strict=False)
        raise ValueError(
            f"{entry!r} has host bits set: write '{meant}' for the network, or "
            f"'{first}' for the one address"
        ) from None


def _check_unambiguous(host: str, entry: str) -> None:
    """Refuse a bare IPv6 address that also reads as ``address:port``.

    ``::1:80`` is a valid address (0::1:80), but most people who write it
    mean port 80 of ``::1``; brackets say which one is meant.
    """
    head, _, tail = host.rpartition(":")
    if (
        tail.isdigit()
        and 0 < int(tail) < 65536
        and parse_address(head) is not None
        and ":" in head
    ):
        raise ValueError(
            f"{entry!r} is ambiguous: write '[{head}]:{tail}' for port {tail} of {head}, "
            f"or '[{host}]' for the address {host}"
        )


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one destination."""

    allowed: bool
    rule: str  # the allow entry that matched, or the refusing rule
    reason: str = ""


class Allowlist:
    """Compiled allow entries and pinned names: decides destinations."""

    def __init__(
        self,
        entries: Iterable[str] = (),
        hosts: Mapping[str, Iterable[str]] | None = None,
    ):
        self.rules = tuple(Rule.parse(entry) for entry in entries)
        self.hosts: dict[str, tuple[IPAddress, ...]] = {}
        for name, addresses in (hosts or {}).items():
            parsed = []
            for text in addresses:
                address = parse_address(text)
                if address is None:
                    raise ValueError(f"hosts[{name!r}]: {text!r} is not an IP address")
                parsed.append(address)
            self.hosts[normalize_name(name)] = tuple(parsed)

    def decide_name(self, name: str, port: int) -> Decision:
        for rule in self.rules:
            if rule.matches_name(name, port):
                return Decision(True, rule.text)
        return Decision(
            False, "default-deny", f"no allow entry matches {name} port {port}"
        )

    def decide_address(
        self, address: IPAddress, port: int, *, via: str | None = None
    ) -> Decision:
        """Decide an address, requested directly or reached through ``via``."""
        for rule in self.rules:
            if rule.matches_address(address, port):
                return Decision(True, rule.text)
        shown = _show(address)
        if via is None:
            return Decision(
                False,
                "default-deny",
                f"no allow entry names address {shown} port {port}; IP addresses must be "
                f"allowed explicitly",
            )
        kind = address_class(address)
        if kind is None:
            return Decision(True, "public-address")
        return Decision(
            False,
            "non-public-address",
            f"{via} resolved to {shown} ({kind}), which no allow entry names "
            f"(DNS rebinding protection); add '{shown}' to allow it",
        )

    def pinned(self, name: str) -> tuple[IPAddress, ...] | None:
        return self.hosts.get(name)


def _show(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


# --- the policy as configured ---------------------------------------------------


def _check_entry(entry: str) -> str:
    Rule.parse(entry)
    return entry


class NetworkPolicy(BaseModel):
    """The ``network`` part of a policy.

    Accepted shapes (``SandboxConfig(network=...)``, YAML, TOML)::

        network = "none"            # or "loopback"
        [network]                   # an allowlist: mode "allow"
        allow = ["pypi.org", "*.pythonhosted.org:443"]
        hosts = { "pypi.test" = "127.0.0.1" }
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: NetworkMode = NetworkMode.NONE
    allow: tuple[Annotated[str, AfterValidator(_check_entry)], ...] = Field(
        default=(),
        description="Allowed destinations: 'name', '*.suffix', addresses or networks, each with an optional ':port'.",
    )
    hosts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Names pinned to addresses (no DNS asked); they still need an allow entry.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shapes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"mode": value.lower()}
        if isinstance(value, (list, tuple)):
            return {"mode": NetworkMode.ALLOW, "allow": tuple(value)}
        if (
            isinstance(value, dict)
            and "mode" not in value
            and ("allow" in value or "hosts" in value)
        ):
            return {**value, "mode": NetworkMode.ALLOW}
        return value

    @field_validator("allow", mode="before")
    @classmethod
    def _allow_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "must be a list of entries, e.g. ['pypi.org', '*.example.org:443']"
            )
        return value

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, tuple[str, ...]] = {}
        for name, addresses in value.items():
            if isinstance(addresses, str):
                addresses = (addresses,)
            try:
                normalize_name(str(name))
            except ValueError as err:
                raise ValueError(f"hosts: {err}") from None
            for text in addresses:
                if parse_address(str(text)) is None:
                    raise ValueError(f"hosts[{name!r}]: {text!r} is not an IP address")
            out[str(name)] = tuple(str(a) for a in addresses)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> NetworkPolicy:
        if self.mode is not NetworkMode.ALLOW and (self.allow or self.hosts):
            raise ValueError(
                f"allow and hosts need mode 'allow', not {self.mode.value!r}"
            )
        return self

    def allowlist(self) -> Allowlist:
        return Allowlist(self.allow, self.hosts)


def proxy_environment() -> dict[str, str]:
    """Variables that point the program's HTTP and SOCKS clients at the proxy.

    Both spellings: curl reads only the lower-case ``http_proxy``, other
    tools only the upper-case forms. ``socks5h`` asks for remote resolution.
    """
    http = f"http://{PROXY_HOST}:{PROXY_PORT}"
    values = {
        "http_proxy": http,
        "https_proxy": http,
        "all_proxy": f"socks5h://{PROXY_HOST}:{PROXY_PORT}",
        "no_proxy": NO_PROXY,
    }
    env = dict(values)
    env.update({name.upper(): value for name, value in values.items()})
    return env


def describe(policy: NetworkPolicy) -> str:
    """One line for the result's ``network`` protection."""
    if policy.mode is NetworkMode.NONE:
        return "none: empty network namespace; the syscall filter refuses inet sockets"
    if policy.mode is NetworkMode.LOOPBACK:
        return "loopback: own network namespace with only lo; host network and loopback unreachable"
    pinned = f", {len(policy.hosts)} pinned names" if policy.hosts else ""
    return (
        f"allow: {len(policy.allow)} entries{pinned}, through the host-side proxy at "
        f"{PROXY_HOST}:{PROXY_PORT} (HTTP, CONNECT, SOCKS5); no other route out"
    )
