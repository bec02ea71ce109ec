"""Network policy and the host-side allowlist proxy.

``policy`` holds the modes, allow entries and decisions (no I/O);
``proxy`` the proxy that serves every run of one SandboxManager.
"""

from .policy import (
    NO_PROXY,
    PROXY_HOST,
    PROXY_PORT,
    Allowlist,
    Decision,
    NetworkMode,
    NetworkPolicy,
    Rule,
    allowed_socket_families,
)

__all__ = [
    "NO_PROXY",
    "PROXY_HOST",
    "PROXY_PORT",
    "Allowlist",
    "Decision",
    "NetworkMode",
    "NetworkPolicy",
    "Rule",
    "allowed_socket_families",
]
