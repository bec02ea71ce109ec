"""Exceptions raised by stockade.

The tree::

    StockadeError                 base of everything raised on purpose
    ├── PolicyError               the policy (SandboxConfig, feature flags, CLI
    │                             options, a per-call timeout) is invalid; raised
    │                             before anything runs, by SandboxConfig(...)
    │                             itself too (pydantic's ValidationError is its
    │                             __cause__); also a ValueError
    ├── CommandError              the command cannot be run as given: empty,
    │                             not found, not executable, cwd missing
    └── SandboxUnavailableError   a protection the policy asks for cannot be
                                  enforced on this host (bwrap missing, user
                                  namespaces blocked, ...); the run never starts

A failure *during* a run (bubblewrap failing to set up the mount view, the
program killed by a limit) is not an exception: it is a ``SandboxResult`` whose
``termination`` says why.
"""

from __future__ import annotations

from ._text import capped

MAX_MESSAGE_CHARS = 4096  # of a PolicyError's message


class StockadeError(Exception):
    """Base class for stockade's own exceptions."""


class PolicyError(StockadeError, ValueError):
    """The policy is invalid.

    Attributes:
        key: the offending setting, dotted for nested keys, when known.
        value: the value given for it, when known.
    """

    def __init__(self, message: str, *, key: str | None = None, value: object = None):
        # a value quoted in the message can be as long as a policy file
        # allows (megabytes): the message is capped, ``value`` keeps it all
        super().__init__(capped(message, MAX_MESSAGE_CHARS))
        self.key = key
        self.value = value


class CommandError(StockadeError):
    """The command cannot be started as given (not the program's own failure).

    Attributes:
        command: the argv that was asked for.
        reason: ``"not_found"``, ``"not_executable"`` or ``"invalid"``
            (the CLI exits 127, 126 or 125, as shells do for the first two).
    """

    def __init__(self, message: str, *, command: list[str] | None = None, reason: str = "invalid"):
        super().__init__(message)
        self.command = command
        self.reason = reason


class SandboxUnavailableError(StockadeError):
    """A protection the policy needs is missing on this host; nothing ran.

    Attributes:
        protection: which protection (e.g. ``"namespaces"``).
        reason: what the host probe found.
        fix: what to change on the host (a package, a sysctl, a profile).
    """

    def __init__(self, protection: str, reason: str, fix: str):
        message = f"cannot enforce {protection}: {reason}. Fix: {fix}"
        super().__init__(message)
        self.protection = protection
        self.reason = reason
        self.fix = fix
