"""The ``stockade`` command.

Exit status of ``stockade run``: the program's own; 128+N when it was killed
by signal N (a limit included); 2 on a usage error (an unknown option, a
malformed one such as ``--env A``, or an option value the policy refuses such
as ``--timeout 0``, ``--hide /``, ``--rw /etc/x``, ``--ro`` or ``--workspace``
naming a path that does not exist); 124 on timeout (as timeout(1)); 125 when
the sandbox itself could not start (a bad policy file or a path rule of one,
a ``--cwd`` that does not exist, a protection the host cannot give); 126 when the command exists but cannot be executed; 127 when it is not
found (as shells do); 3 when a limit ended the run although the program
itself exited 0 (e.g. its forks were refused at the process limit); 128+N
when the CLI itself got signal N (SIGINT, SIGTERM, SIGHUP) and stopped the run.
When stdin, stdout or stderr is a terminal, its settings, window size and
file status flags are put back after the run, however it ended
(``stockade.terminal``).

Exit status of ``stockade doctor``: 0 when runs under the policy (the
default one, or ``--config`` and the options given) can start on this host,
1 when they would be refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__
from ._text import printable

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127
EXIT_LIMIT_SURVIVED = 3
EXIT_TIMEOUT = 124
EXIT_SANDBOX_ERROR = 125
EXIT_NOT_EXECUTABLE = 126


class _Unlimited:
    """The value of a limit option given as ``none``."""

    def __repr__(self) -> str:
        return "none"


UNLIMITED = _Unlimited()


def _limit(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "off", "unlimited"):
            return UNLIMITED
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', not {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockade",
        description="Run a command in a Linux sandbox and report what happened.",
    )
    parser.add_argument("--version", action="version", version=f"stockade {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="diagnostics on stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a command in the sandbox",
        description=(
            "Run CMD in the sandbox. Without --json, stdin/stdout/stderr pass "
            "through and a one-line summary goes to stderr."
        ),
    )
    run.set_defaults(run_parser=run)
    run.add_argument("--mode", choices=["strict", "moderate", "permissive", "disabled"])
    # every limit also takes "none": not limited by stockade
    run.add_argument("--timeout", type=_limit(float), metavar="SEC", help="wall-clock limit in seconds")
    run.add_argument("--cpu-time", type=_limit(float), metavar="SEC", help="CPU seconds of the whole process tree")
    run.add_argument("--memory", type=_limit(int), metavar="MIB", help="memory of the whole process tree, MiB")
    run.add_argument(
        "--pids",
        "--max-processes",
        dest="max_processes",
        type=_limit(int),
        metavar="N",
        help="processes and threads of the whole tree at once",
    )
    run.add_argument("--cpus", type=_limit(float), metavar="CORES", help="CPU quota in cores, e.g. 0.5")
    run.add_argument(
        "--disk",
        type=_limit(int),
        metavar="MIB",
        help=(
            "disk budget, MiB: each private tmpfs, the largest file, workspace growth "
            "(--rw paths outside the workspace are not budgeted)"
        ),
    )
    run.add_argument("--workspace", metavar="DIR", help="writable directory (default: the current directory)")
    run.add_argument(
        "--cwd",
        metavar="DIR",
        help="working directory inside the workspace (a relative DIR is resolved against "
        "the current directory, not the workspace)",
    )
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="set a variable (repeatable)")
    _network_options(run)
    run.add_argument("--config", metavar="FILE", help="policy file (YAML or TOML; feature-flag files too)")
    _path_options(run)
    _tier_options(run)
    run.add_argument("--json", action="store_true", help="capture output and print the result as JSON")
    run.add_argument("--max-output", type=int, metavar="MIB", help="captured bytes kept per stream (with --json)")
    run.add_argument(
        "--truncate-output",
        action="store_true",
        help="past --max-output keep the program running and drop the rest (the result "
        "flags the stream truncated) instead of ending the run with output_limit",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no summary line")
    run.add_argument("--no-log", action="store_true", help="do not append to the execution log")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    filters = sub.add_parser("filters", help="show the syscall filters")
    filters_sub = filters.add_subparsers(dest="filters_cmd", metavar="ACTION")
    show = filters_sub.add_parser(
        "show", help="print what a mode's filter allows and denies"
    )
    show.add_argument("--mode", choices=["strict", "moderate", "permissive"])
    show.add_argument(
        "--network", default="none", help="network policy (default: none)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    doc = filters_sub.add_parser(
        "doc", help="print the generated part of docs/filters.md"
    )
    doc.add_argument(
        "--write", metavar="FILE", help="update the generated part of FILE in place"
    )
    doctor = sub.add_parser(
        "doctor",
        help="what this host can enforce, protection by protection",
        description=(
            "Probe the host and show, for the policy (the default one unless "
            "--config or options say otherwise), which tier runs would use and "
            "whether each protection is enforced, degraded or unavailable, with "
            "the reason and the fix. Exit status 1 when runs would be refused."
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--config", metavar="FILE", help="policy file to check")
    doctor.add_argument("--mode", choices=["strict", "moderate", "permissive", "disabled"])
    # the network policy decides the second tier's network row
    _network_options(doctor)
    _tier_options(doctor)
    doctor.set_defaults(doctor_parser=doctor)
    return parser


def _network_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network",
        choices=["none", "loopback"],
        help="no network (default) or the sandbox's own loopback only",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="allow a destination through the proxy: name, *.suffix or address (repeatable)",
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="NAME=ADDR",
        help="pin a name to an address for the proxy, without DNS (repeatable; needs --allow)",
    )


def _path_options(parser: argparse.ArgumentParser) -> None:
    from .fs.presets import PRESETS

    group = parser.add_argument_group(
        "paths",
        "Relative paths resolve against the workspace, ~ against your home; the "
        "most specific rule wins (docs/filesystem.md). Each option is repeatable.",
    )
    for option, text in (
        ("--ro", "show PATH read-only"),
        ("--rw", "make PATH writable (created if missing)"),
        ("--hide", "hide PATH: no reading, no writing"),
    ):
        group.add_argument(
            option, action="append", default=[], metavar="PATH", help=text
        )
    group.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="PATH",
        help="keep PATH read-only inside writable places (added to the default list)",
    )
    group.add_argument(
        "--no-protect",
        action="store_true",
        help="drop the default protected paths (.git/hooks, .git/config, ...)",
    )
    group.add_argument(
        "--preset",
        action="append",
        default=[],
        choices=list(PRESETS),
        help="policy include for a tool: "
        + "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()),
    )


def _path_changes(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """Path rules the options add to the policy's."""
    import os

    changes: dict[str, Any] = {}
    for option, key in (("ro", "read_only"), ("rw", "writable"), ("hide", "hidden")):
        items = getattr(args, option)
        if items:
            changes[key] = (*getattr(config, key), *items)
    protected = () if args.no_protect else tuple(config.protected)
    protected += tuple(args.protect)
    if args.config and not args.no_protect:
        # the policy file itself, when it lies in a writable place
        protected += (os.path.abspath(args.config),)
    if protected != tuple(config.protected):
        changes["protected"] = tuple(dict.fromkeys(protected))
    if args.preset:
        changes["presets"] = tuple(dict.fromkeys([*config.presets, *args.preset]))
    return changes


def _tier_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tier",
        choices=["auto", "namespaces", "landlock"],
        help="how to build the sandbox (default auto: namespaces, see `stockade doctor`)",
    )
    parser.add_argument(
        "--allow-degraded",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="accept a protection weaker or missing (namespaces accepts the second tier)",
    )


def _tier_changes(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.tier is not None:
        changes["tier"] = args.tier
    names = [name.strip() for item in args.allow_degraded for name in item.split(",") if name.strip()]
    if names:
        changes["allow_degraded"] = tuple(dict.fromkeys([*config.allow_degraded, *names]))
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.cmd == "run":
        return _run(args, parser)
    if args.cmd == "filters":
        return _filters(args, parser)
    if args.cmd == "doctor":
        return _doctor(args)
    parser.print_help(sys.stderr)
    return 2


# characters of an error message the CLI prints (a config value quoted in
# it can be anything: a YAML alias bomb expanded to 500 MB, once)
ERROR_CHARS = 2048


def _say(line: str) -> None:
    """One line of stockade's own on stderr.

    On a terminal it starts with an SGR reset (``ESC[0m``): the program had
    the terminal until now, and could have left it drawing hidden (``ESC[8m``)
    or invisible text. Only on a terminal: a file or pipe gets the line alone.
    """
    reset = ""
    try:
        if sys.stderr.isatty():
            reset = "\033[0m"
    except (AttributeError, ValueError, OSError):
        pass
    try:
        print(reset + line, file=sys.stderr)
        sys.stderr.flush()
    except BrokenPipeError:
        _drop_stream(sys.stderr)


def _say_error(err: object) -> None:
    """``stockade: <err>``, escaped: an error can quote what the program or a
    policy file chose (paths, values), which must not drive the terminal."""
    _say(f"stockade: {printable(str(err), limit=ERROR_CHARS)}")


class _EscapingFormatter(logging.Formatter):
    """Log messages escaped like errors (they can quote program-chosen text)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        record.message = printable(record.message, limit=ERROR_CHARS)
        return super().formatMessage(record)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("stockade: %(levelname)s: %(message)s"))
    root = logging.getLogger("stockade")
    root.addHandler(handler)
    root.setLevel(level)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # The launcher's interpreter starts on another core while this one
    # imports the policy models (together about 0.1 s of a CLI run).
    from .linux.client import shared_launcher

    shared_launcher().start_soon()

    from .config import SandboxConfig, load_policy_file
    from .errors import CommandError, PolicyError, StockadeError
    from . import terminal
    from .manager import SandboxManager

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("run: no command given (stockade run [options] -- CMD ...)")

    try:
        config = load_policy_file(args.config) if args.config else SandboxConfig()
        changes: dict[str, Any] = {}
        for option, field in (
            ("mode", "mode"),
            ("timeout", "timeout_sec"),
            ("cpu_time", "cpu_time_sec"),
            ("memory", "memory_mb"),
            ("max_processes", "max_processes"),
            ("cpus", "cpu_cores"),
            ("disk", "disk_mb"),
            ("workspace", "workspace"),
        ):
            value = getattr(args, option)
            if value is not None:
                changes[field] = None if value is UNLIMITED else value
        env = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--env {item!r}: expected NAME=VALUE")
            env[name] = value
        if env:
            changes["env"] = {**config.env, **env}
        network = _network_changes(args, config, parser)
        if network is not None:
            changes["network"] = network
        if args.no_log:
            changes["execution_log"] = False
        changes.update(_tier_changes(args, config))
        changes.update(_path_changes(args, config))
        if (args.max_output is not None or args.truncate_output) and not args.json:
            args.run_parser.error("--max-output and --truncate-output apply to captured output (--json)")
        if args.max_output is not None:
            changes["max_output_bytes"] = args.max_output * 1024 * 1024
        if args.truncate_output:
            changes["output_limit_action"] = "truncate"
        if changes:
            # validated like a policy file: numbers stay numbers (argparse
            # converted them), errors name the field and the value given;
            # the file's own values were checked when it was loaded, so an
            # error here is an option's: a usage error, as argparse's are
            try:
                config = SandboxConfig.from_mapping(
                    {**config.model_dump(), **changes}, source="command line"
                )
            except PolicyError as err:
                _say_error(err)
                return EXIT_USAGE
        manager = SandboxManager(config)
        # the program may change the terminal it gets (stty -echo, raw mode,
        # window size): put it back when the run ends, however it ends
        with terminal.preserved(), _signals_interrupt():
            result = manager.execute(
                command,
                cwd=args.cwd,
                # the program reads the CLI's stdin in both modes; --json
                # only changes where its output goes
                stdin=_cli_stdin(),
                capture_output=bool(args.json),
            )
    except CommandError as err:
        _say_error(err)
        return {"not_found": EXIT_NOT_FOUND, "not_executable": EXIT_NOT_EXECUTABLE}.get(
            err.reason, EXIT_SANDBOX_ERROR
        )
    except StockadeError as err:
        _say_error(err)
        if isinstance(err, PolicyError) and _from_options(err, args):
            return EXIT_USAGE
        return EXIT_SANDBOX_ERROR
    except Interrupted as err:
        _say(f"stockade: {err.name}: the run was stopped")
        return 128 + err.signum

    if args.json:
        _print_stdout(result.to_json(indent=2))
    elif not args.quiet:
        _say(result.summary())
    return exit_status(result)


# policy keys whose values a run's options give, and the options
_OPTION_KEYS = {
    "read_only": "ro", "writable": "rw", "hidden": "hide", "protected": "protect",
    "workspace": "workspace",
}


def _from_options(err: Any, args: argparse.Namespace) -> bool:
    """Whether a PolicyError raised when the run was prepared (path rules,
    the workspace) is about a value given on the command line: a bad option
    value, exit status 2, as those refused when the policy is made. The same
    value from a policy file stays a sandbox error (125)."""
    import os

    option = _OPTION_KEYS.get(err.key or "")
    given = getattr(args, option, None) if option else None
    if not given:
        return False
    values = given if isinstance(given, list) else [given]
    if err.value in values:
        return True
    # the workspace is named by its canonical path in some errors
    return option == "workspace" and err.value == os.path.realpath(str(given))


def _print_stdout(text: str) -> None:
    """``print`` to stdout, quiet when its reader is gone (``| head``, ``| true``).

    The exit status stays the run's. As the Python documentation advises,
    stdout is then pointed at /dev/null so that the interpreter's own flush
    at exit does not fail again with a traceback.
    """
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stream(sys.stdout)


def _drop_stream(stream: Any) -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _cli_stdin() -> Any:
    """The CLI's stdin for the program, or None (/dev/null) when the CLI
    was started without one (closed fd 0)."""
    try:
        sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return sys.stdin


def _filters(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .errors import StockadeError
    from .linux import seccomp, seccomp_doc
    from .linux.syscall_groups import MODES

    if args.filters_cmd == "doc":
        if not args.write:
            sys.stdout.write(seccomp_doc.render_markdown())
            return 0
        with open(args.write, encoding="utf-8") as fh:
            text = fh.read()
        try:
            updated = seccomp_doc.replace_generated(text)
        except ValueError as err:
            _say_error(f"{args.write}: {err}")
            return 1
        with open(args.write, "w", encoding="utf-8") as fh:
            fh.write(updated)
        return 0
    if args.filters_cmd != "show":
        parser.error("filters: choose an action: show or doc")
    try:
        modes = [args.mode] if args.mode else list(MODES)
        built = {
            mode: seccomp.SyscallFilter(mode, network=args.network) for mode in modes
        }
    except StockadeError as err:
        _say_error(err)
        return EXIT_SANDBOX_ERROR
    if args.json:
        data = {mode: flt.describe() for mode, flt in built.items()}
        print(json.dumps(data[args.mode] if args.mode else data, indent=2))
    elif args.mode:
        sys.stdout.write(seccomp_doc.render_text(built[args.mode]))
    else:
        sys.stdout.write(seccomp_doc.render_overview())
    return 0


def _network_changes(
    args: argparse.Namespace, config: Any, parser: argparse.ArgumentParser
) -> Any:
    """The network policy the options ask for, or None to keep the config's."""
    if args.network and (args.allow or args.resolve):
        parser.error(f"--network {args.network} cannot be combined with --allow/--resolve")
    if args.network:
        return args.network
    if not args.allow and not args.resolve:
        return None
    current = config.network
    if args.resolve and not args.allow and not current.allow:
        # a pin alone would make an allowlist with no entries, which refuses
        # every destination, the pinned name included
        parser.error(
            f"--resolve {args.resolve[0]!r} needs --allow: a pinned name is reached only "
            "through an allow entry, e.g. --allow pypi.test:8080 --allow 127.0.0.1:8080 "
            "--resolve pypi.test=127.0.0.1"
        )
    hosts = {name: list(addresses) for name, addresses in current.hosts.items()}
    for item in args.resolve:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            parser.error(f"--resolve {item!r}: expected NAME=ADDRESS")
        hosts.setdefault(name, []).append(address)
    return {"allow": [*current.allow, *args.allow], "hosts": hosts}


def _doctor(args: argparse.Namespace) -> int:
    from .config import SandboxConfig, load_policy_file
    from .doctor import render, report
    from .errors import StockadeError

    try:
        config = load_policy_file(args.config) if args.config else SandboxConfig()
        changes = _tier_changes(args, config)
        if args.mode is not None:
            changes["mode"] = args.mode
        network = _network_changes(args, config, args.doctor_parser)
        if network is not None:
            changes["network"] = network
        if changes:
            config = config.with_changes(**changes)
        data = report(config)
    except StockadeError as err:
        _say_error(err)
        return 2
    if args.json:
        _print_stdout(json.dumps(data, indent=2))
    else:
        _print_stdout(render(data))
    return 0 if data["ok"] else 1


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the CLI while a run was going on."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into ``Interrupted`` while a run goes on, so
    that the run is killed, awaited and checked (protected paths) before the
    CLI exits, instead of the CLI dying on the spot."""

    def raise_interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_status(result: Any) -> int:
    """The CLI's exit status for a result (see the module docstring)."""
    from .result import Termination

    if result.termination is Termination.TIMEOUT:
        return EXIT_TIMEOUT
    if result.termination is Termination.SANDBOX_ERROR:
        return EXIT_SANDBOX_ERROR
    if result.exit_code is not None:
        if result.exit_code == 0 and not result.success:
            # a limit ended the run though the program exited 0 by itself
            # (a refused fork, output dropped past the cap): never report 0
            return EXIT_LIMIT_SURVIVED
        return int(result.exit_code)
    if result.signal is not None:
        return 128 + int(result.signal)
    return EXIT_SANDBOX_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
