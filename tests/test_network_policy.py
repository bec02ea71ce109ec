"""The network policy without I/O: entries, decisions, config shapes."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from stockade import PolicyError, SandboxConfig
from stockade.config import load_policy_file
from stockade.network.policy import (
    Allowlist,
    NetworkMode,
    Rule,
    address_class,
    allowed_socket_families,
    proxy_environment,
)


@pytest.mark.parametrize(
    "entry, why",
    [
        ("*foo", "wildcard"),
        ("*", "wildcard"),
        ("*.*.example.org", "wildcard"),
        ("foo.*.org", "wildcard"),
        ("a..b", "empty label"),
        (".example.org", "empty label"),
        ("example.org:0", "port"),
        ("example.org:65536", "port"),
        ("example.org:http", "port"),
        ("https://pypi.org", "URL"),
        ("pypi.org/simple", "path"),
        ("", "empty"),
        (" pypi.org", "spaces"),
        ("[::1", "without"),
        ("[::g]:80", "IPv6"),
        ("1.2.3", "neither"),
        ("-bad.example", "label"),
        # a bare IPv6 address that also reads as address:port
        ("::1:80", "write '[::1]:80'"),
        ("fe80::1:443", "write '[fe80::1]:443'"),
        ("10.0.0.0/33", "prefix length '33'"),
        ("fd00::/129", "prefix length '129'"),
        ("10.0.0.0/x", "prefix length 'x'"),
        ("fd00::/8:443", "write '[fd00::/8]:443'"),
        # host bits set: refused, naming the network probably meant
        ("1.2.3.4/8", "write '1.0.0.0/8'"),
        ("[fd00::1/8]:443", "write 'fd00::/8'"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(entry, why):
    with pytest.raises(PolicyError) as info:
        SandboxConfig.from_mapping({"network": {"allow": ["good.example", entry]}})
    message = str(info.value)
    assert repr(entry) in message
    assert why in message
    assert info.value.key == "network.allow.1"
    assert info.value.value == entry


@pytest.mark.parametrize(
    "entry, host, port, allowed",
    [
        ("pypi.example", "pypi.example", 443, True),
        ("pypi.example", "PyPI.Example.", 80, True),
        ("pypi.example", "files.pypi.example", 443, False),
        ("*.example.org:443", "a.example.org", 443, True),
        ("*.example.org:443", "a.b.example.org", 443, True),
        ("*.example.org:443", "a.example.org", 80, False),
        ("*.example.org:443", "example.org", 443, False),
        ("*.example.org:443", "badexample.org", 443, False),
    ],
)
def test_name_rules(entry, host, port, allowed):
    from stockade.network.policy import normalize_name

    decision = Allowlist([entry]).decide_name(normalize_name(host), port)
    assert decision.allowed is allowed
    if allowed:
        assert decision.rule == entry
    else:
        assert decision.rule == "default-deny"
        assert str(port) in decision.reason


def test_address_rules_and_ipv6():
    allowlist = Allowlist(["127.0.0.1:8080", "[::1]", "10.0.0.0/8"])
    ip = ipaddress.ip_address
    assert allowlist.decide_address(ip("127.0.0.1"), 8080).allowed
    assert not allowlist.decide_address(ip("127.0.0.1"), 8081).allowed
    assert allowlist.decide_address(ip("::1"), 1).rule == "[::1]"
    assert allowlist.decide_address(ip("10.2.3.4"), 22).rule == "10.0.0.0/8"
    # an IPv4-mapped IPv6 address is the IPv4 address
    assert allowlist.decide_address(ip("::ffff:127.0.0.1"), 8080).allowed
    refused = allowlist.decide_address(ip("93.184.216.34"), 80)
    assert not refused.allowed and "explicitly" in refused.reason


@pytest.mark.parametrize(
    "entry, network, port",
    [
        ("::1", "::1/128", None),
        ("1::80", "1::80/128", None),  # cannot be read as address:port
        ("[::1:80]", "::1:80/128", None),
        ("[::1]:80", "::1/128", 80),
        ("2001:db8::1", "2001:db8::1/128", None),
        ("10.0.0.0/8:443", "10.0.0.0/8", 443),
        ("[fd00::/8]:443", "fd00::/8", 443),
        ("1.2.3.4/32", "1.2.3.4/32", None),
    ],
)
def test_address_entries_that_are_accepted(entry, network, port):
    rule = Rule.parse(entry)
    assert (str(rule.network), rule.port) == (network, port)


def test_names_never_match_address_rules_and_vice_versa():
    allowlist = Allowlist(["127.0.0.1", "example.org"])
    assert not allowlist.decide_name("localhost", 80).allowed
    assert not allowlist.decide_address(
        ipaddress.ip_address("93.184.216.34"), 80
    ).allowed


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "non-public"),
        ("224.0.0.1", "multicast"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_classes(address, kind):
    assert address_class(ipaddress.ip_address(address)) == kind


def test_rebinding_needs_the_address_named():
    allowlist = Allowlist(["pypi.test"])
    verdict = allowlist.decide_address(
        ipaddress.ip_address("127.0.0.1"), 80, via="pypi.test"
    )
    assert not verdict.allowed
    assert verdict.rule == "non-public-address"
    assert "127.0.0.1 (loopback)" in verdict.reason
    public = allowlist.decide_address(
        ipaddress.ip_address("93.184.216.34"), 80, via="pypi.test"
    )
    assert public.allowed
    named = Allowlist(["pypi.test", "127.0.0.1:80"])
    assert named.decide_address(
        ipaddress.ip_address("127.0.0.1"), 80, via="pypi.test"
    ).allowed
    assert not named.decide_address(
        ipaddress.ip_address("127.0.0.1"), 81, via="pypi.test"
    ).allowed


def test_idna_names_are_compared_in_ascii():
    rule = Rule.parse("bücher.example")
    assert rule.name == "xn--bcher-kva.example"


def test_socket_families_per_mode():
    unix_only = allowed_socket_families("none")
    assert socket.AF_INET not in unix_only and socket.AF_INET6 not in unix_only
    assert socket.AF_UNIX in unix_only
    for mode in (NetworkMode.LOOPBACK, NetworkMode.ALLOW):
        families = allowed_socket_families(mode)
        assert {socket.AF_INET, socket.AF_INET6, socket.AF_UNIX} <= families
    for mode in NetworkMode:
        assert socket.AF_PACKET not in allowed_socket_families(mode)


def test_config_shapes():
    assert SandboxConfig().network.mode is NetworkMode.NONE
    assert SandboxConfig(network="loopback").network.mode is NetworkMode.LOOPBACK
    listed = SandboxConfig(network=["pypi.org"]).network
    assert listed.mode is NetworkMode.ALLOW and listed.allow == ("pypi.org",)
    pinned = SandboxConfig(
        network={"allow": ["a.test"], "hosts": {"a.test": "127.0.0.1"}}
    ).network
    assert pinned.hosts == {"a.test": ("127.0.0.1",)}
    empty = SandboxConfig(network={"allow": []}).network
    assert empty.mode is NetworkMode.ALLOW and empty.allow == ()
    # survives with_changes (model_dump round trip)
    again = SandboxConfig(network=["pypi.org"]).with_changes(timeout_sec=5).network
    assert again == listed


@pytest.mark.parametrize(
    "value, key",
    [
        ("everything", "network.mode"),
        ({"mode": "loopback", "allow": ["a.test"]}, "network"),
        ({"allow": "a.test"}, "network.allow"),
        ({"allow": ["a.test"], "hosts": {"a.test": "not-an-ip"}}, "network.hosts"),
        ({"allow": ["a.test"], "hosts": {"*.test": "127.0.0.1"}}, "network.hosts"),
        ({"allow": [], "proxy": 1}, "network.proxy"),
    ],
)
def test_bad_network_policies(value, key):
    with pytest.raises(PolicyError) as info:
        SandboxConfig.from_mapping({"network": value})
    assert info.value.key == key


def test_policy_files(tmp_path):
    toml = tmp_path / "policy.toml"
    toml.write_text('[network]\nallow = ["pypi.org", "*.pythonhosted.org:443"]\n')
    assert load_policy_file(toml).network.allow == (
        "pypi.org",
        "*.pythonhosted.org:443",
    )
    yaml_file = tmp_path / "policy.yaml"
    yaml_file.write_text("network: loopback\n")
    assert load_policy_file(yaml_file).network.mode is NetworkMode.LOOPBACK
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nallow = ["https://pypi.org/simple"]\n')
    with pytest.raises(PolicyError, match="https://pypi.org/simple"):
        load_policy_file(bad)


def test_proxy_environment_both_spellings():
    env = proxy_environment()
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        assert env[name] == env[name.upper()]
    assert env["all_proxy"].startswith("socks5h://")
    assert "127.0.0.1" in env["no_proxy"]
