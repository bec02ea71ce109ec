"""Policy validation, files and feature flags: errors name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade import PolicyError, SandboxConfig, SandboxMode, create_sandbox_from_feature_flags
from stockade.config import load_policy_file


def test_defaults_are_moderate_with_limits():
    config = SandboxConfig()
    assert config.mode is SandboxMode.MODERATE
    assert config.cpu_time_sec == 300 and config.memory_mb == 512 and config.disk_mb == 100
    assert config.file_size_mb == 100


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"nonsense": 1}, "nonsense", 1),
        ({"memory_mb": 0}, "memory_mb", 0),
        ({"cpu_time_sec": -5}, "cpu_time_sec", -5),
        ({"timeout_sec": "soon"}, "timeout_sec", "soon"),
        ({"mode": "paranoid"}, "mode", "paranoid"),
        ({"max_open_files": 0}, "max_open_files", 0),
    ],
)
def test_bad_policy_names_key_and_value(data, key, value):
    with pytest.raises(PolicyError) as info:
        SandboxConfig.from_mapping(data)
    assert info.value.key == key
    assert info.value.value == value
    assert key in str(info.value) and repr(value) in str(info.value)


def test_mode_accepts_any_case():
    assert SandboxConfig(mode="STRICT").mode is SandboxMode.STRICT


def test_config_is_immutable():
    config = SandboxConfig()
    with pytest.raises(Exception):
        config.memory_mb = 1  # type: ignore[misc]


def test_with_changes_validates():
    with pytest.raises(PolicyError):
        SandboxConfig().with_changes(disk_mb=-1)


def test_bad_env_name_is_refused():
    with pytest.raises(PolicyError):
        SandboxConfig.from_mapping({"env": {"A=B": "1"}})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_feature_flags_file(tmp_path):
    path = write(
        tmp_path,
        "flags.yaml",
        """
security:
  sandbox_enabled: true
  sandbox_mode: "strict"
  sandbox_resource_limits:
    cpu_time_sec: 30
    memory_mb: 256
    disk_mb: 50
""",
    )
    manager = create_sandbox_from_feature_flags(path)
    assert manager.config.mode is SandboxMode.STRICT
    assert (manager.config.cpu_time_sec, manager.config.memory_mb, manager.config.disk_mb) == (30, 256, 50)


def test_feature_flags_disabled_means_mode_disabled(tmp_path):
    path = write(tmp_path, "flags.yaml", "security:\n  sandbox_enabled: false\n  sandbox_mode: strict\n")
    assert create_sandbox_from_feature_flags(path).config.mode is SandboxMode.DISABLED


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("security:\n  sandbox_enabled: maybe\n", "security.sandbox_enabled"),
        ("security:\n  sandbox_mode: loose\n", "mode"),
        ("security:\n  sandbox_resource_limits:\n    memory_mb: -1\n", "memory_mb"),
        ("security:\n  sandbox_resource_limits:\n    gpu: 1\n", "security.sandbox_resource_limits.gpu"),
        ("security:\n  extra: 1\n", "security.extra"),
    ],
)
def test_bad_feature_flags(tmp_path, text, key):
    path = write(tmp_path, "flags.yaml", text)
    with pytest.raises(PolicyError) as info:
        create_sandbox_from_feature_flags(path)
    assert info.value.key == key


def test_missing_flags_file_is_an_error(tmp_path):
    with pytest.raises(PolicyError):
        create_sandbox_from_feature_flags(tmp_path / "absent.yaml")


def test_toml_policy_file(tmp_path):
    path = write(tmp_path, "policy.toml", 'mode = "permissive"\ntimeout_sec = 5\n[env]\nA = "1"\n')
    config = load_policy_file(path)
    assert config.mode is SandboxMode.PERMISSIVE and config.timeout_sec == 5 and config.env == {"A": "1"}


def test_yaml_policy_file_with_unknown_key(tmp_path):
    path = write(tmp_path, "policy.yaml", "mode: moderate\nmemroy_mb: 5\n")
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.key == "memroy_mb"


# -- numbers: finite, bounded, never coerced -----------------------------------

import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from stockade import config as _config  # noqa: E402


def test_constructor_raises_policy_error_with_the_validation_error_as_cause():
    with pytest.raises(PolicyError) as info:
        SandboxConfig(memory_mb=0)
    assert info.value.key == "memory_mb" and info.value.value == 0
    assert "memory_mb = 0" in str(info.value)
    assert isinstance(info.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout_sec", math.nan),
        ("timeout_sec", math.inf),
        ("cpu_time_sec", math.inf),
        ("cpu_time_sec", -math.inf),
        ("cpu_cores", math.nan),
    ],
)
def test_non_finite_numbers_are_refused(key, value):
    for make in (lambda: SandboxConfig(**{key: value}), lambda: SandboxConfig.from_mapping({key: value})):
        with pytest.raises(PolicyError) as info:
            make()
        assert info.value.key == key and f"{key} = {value!r}" in str(info.value)


@pytest.mark.parametrize(
    ("key", "bound"),
    [
        ("timeout_sec", _config.MAX_TIMEOUT_SEC),
        ("cpu_time_sec", _config.MAX_CPU_TIME_SEC),
        ("cpu_cores", _config.MAX_CPU_CORES),
        ("memory_mb", _config.MAX_SIZE_MB),
        ("disk_mb", _config.MAX_SIZE_MB),
        ("max_file_size_mb", _config.MAX_SIZE_MB),
        ("max_processes", _config.MAX_PROCESSES),
        ("max_open_files", _config.MAX_OPEN_FILES),
        ("max_output_bytes", _config.MAX_OUTPUT_BYTES),
        ("run_as_uid", _config.MAX_ID),
        ("run_as_gid", _config.MAX_ID),
    ],
)
def test_limits_past_their_bound_are_refused_naming_key_value_and_bound(key, bound):
    assert getattr(SandboxConfig(**{key: bound}), key) == bound  # the bound itself is fine
    over = bound * 10**6 if key.endswith("_sec") else bound + 1
    with pytest.raises(PolicyError) as info:
        SandboxConfig(**{key: over})
    message = str(info.value)
    assert info.value.key == key and info.value.value == over
    assert f"{key} = {over!r}" in message and f"at most {bound}" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("memory_mb", True),           # YAML `yes`
        ("disk_mb", False),
        ("cpu_time_sec", True),
        ("timeout_sec", "30"),
        ("memory_mb", "512"),
        ("max_open_files", 1.5),
        ("max_processes", 8.0),
        ("run_as_uid", "1000"),
        ("cpu_cores", "0.5"),
    ],
)
def test_wrong_types_are_refused_not_coerced(key, value):
    with pytest.raises(PolicyError) as info:
        SandboxConfig(**{key: value})
    assert info.value.key == key and info.value.value == value
    assert f"{key} = {value!r}" in str(info.value)


def test_ints_are_accepted_where_floats_are_expected():
    config = SandboxConfig(timeout_sec=5, cpu_time_sec=2, cpu_cores=1)
    assert (config.timeout_sec, config.cpu_time_sec, config.cpu_cores) == (5.0, 2.0, 1.0)


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("policy.yaml", "memory_mb: yes\n", "memory_mb"),
        ("policy.yaml", 'timeout_sec: "30"\n', "timeout_sec"),
        ("policy.toml", 'timeout_sec = "30"\n', "timeout_sec"),
        ("policy.toml", "cpu_time_sec = inf\n", "cpu_time_sec"),
        ("policy.yaml", "disk_mb: 1000000000000000\n", "disk_mb"),
        ("flags.yaml", "security:\n  sandbox_resource_limits:\n    memory_mb: yes\n", "memory_mb"),
        ("flags.yaml", "security:\n  sandbox_resource_limits:\n    cpu_time_sec: .nan\n", "cpu_time_sec"),
    ],
)
def test_policy_and_flag_files_are_strict_too(tmp_path, name, text, key):
    path = write(tmp_path, name, text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.key == key and str(path) in str(info.value)
    if name == "flags.yaml":
        with pytest.raises(PolicyError):
            create_sandbox_from_feature_flags(path)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, "5", True, 0, -1, 10**9])
def test_per_call_timeout_is_checked_before_anything_runs(timeout, tmp_path):
    from stockade import SandboxManager

    manager = SandboxManager(SandboxConfig(execution_log=False))
    with pytest.raises(PolicyError) as info:
        manager.execute(["true"], cwd=tmp_path, timeout=timeout)
    assert info.value.key == "timeout" and f"timeout = {timeout!r}" in str(info.value)


def test_open_files_above_what_the_caller_may_set_are_refused_before_the_run(workspace):
    from stockade import SandboxManager
    from stockade.manager import _has_cap_sys_resource, _nr_open

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ceiling = _nr_open() if _has_cap_sys_resource() else hard
    if ceiling is None or ceiling >= _config.MAX_OPEN_FILES:
        pytest.skip(f"the caller may set up to {ceiling}: no value in bounds is above it")
    manager = SandboxManager(SandboxConfig(execution_log=False, max_open_files=ceiling + 1))
    with pytest.raises(PolicyError) as info:
        manager.execute(["true"], cwd=workspace)
    assert info.value.key == "max_open_files" and f"above {ceiling}" in str(info.value)
    # the ceiling itself runs, and is in force in the sandbox
    result = SandboxManager(SandboxConfig(execution_log=False, max_open_files=ceiling)).execute(
        ["sh", "-c", "ulimit -n"], cwd=workspace
    )
    assert result.success and result.stdout_text.strip() == str(ceiling), (result.error, result.stderr_text)


def _strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_result_json_and_execution_log_never_hold_nan_or_infinity(tmp_path):
    from stockade.audit import ExecutionLog
    from stockade.result import SandboxResult, Termination, Usage

    # not reachable through a validated policy: built by hand
    result = SandboxResult(
        run_id="r1", command=["true"], termination=Termination.EXITED, exit_code=0, signal=None,
        stdout=b"", stderr=b"", wall_time_sec=math.inf,
        usage=Usage(cpu_user_sec=math.nan), mode="moderate",
        limits={"timeout_sec": math.nan, "cpu_time_sec": math.inf}, protections=[],
    )
    data = _strict_json(result.to_json())
    assert data["limits"] == {"timeout_sec": None, "cpu_time_sec": None}
    assert data["usage"]["cpu_user_sec"] is None and data["wall_time_sec"] is None
    log = ExecutionLog(tmp_path / "runs.jsonl")
    log.record(result, cwd="/w")
    entry = _strict_json((tmp_path / "runs.jsonl").read_text())
    assert entry["limits"]["timeout_sec"] is None and entry["usage"]["cpu_user_sec"] is None


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("timeout_sec: 1e3\n", "write 1000 or 1.0e+3"),
        ("timeout_sec: abc\n", "a number is written without quotes"),
    ],
)
def test_yaml_number_written_as_text_gets_a_hint_that_fits(tmp_path, text, hint):
    # YAML 1.1 reads 1e3 as a string: telling its writer to drop quotes
    # they never wrote would not help.
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert hint in str(info.value)
    assert "timeout_sec" in str(info.value)


# -- policy files: one format, no aliases, bounded messages -------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('mode: "strict"\nsecurity:\n  sandbox_enabled: false\n', "mode"),
        ('mode: "strict"\nsecurity:\n  sandbox_mode: permissive\n', "mode"),
        ("memory_mb: 64\nsecurity: {}\n", "memory_mb"),
    ],
)
def test_a_file_mixing_the_plain_and_the_flag_format_is_refused(tmp_path, text, key):
    path = write(tmp_path, "policy.yaml", text)
    for load in (load_policy_file, create_sandbox_from_feature_flags):
        with pytest.raises(PolicyError) as info:
            load(path)
        assert info.value.key == key
        message = str(info.value)
        assert f"({key})" in message and "(security)" in message and "ambiguous" in message


def test_a_flag_file_with_other_sections_of_the_host_application_still_loads(tmp_path):
    path = write(tmp_path, "flags.yaml", "ui:\n  dark: true\nsecurity:\n  sandbox_mode: strict\n")
    assert load_policy_file(path).mode is SandboxMode.STRICT


BILLION_LAUGHS = """
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
mode: [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (BILLION_LAUGHS, "an anchor (&a)"),
        ("mode: *nowhere\n", "an alias (*nowhere)"),
        ("base: &b {memory_mb: 64}\n<<: *b\n", "an anchor (&b)"),
    ],
)
def test_yaml_anchors_and_aliases_are_refused(tmp_path, text, what):
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert what in message and "not accepted in policy files" in message
    assert "\n" not in message and len(message) < 400


def test_a_huge_value_is_quoted_short_in_the_error(tmp_path):
    path = write(tmp_path, "policy.yaml", 'mode: "' + "x" * 5_000_000 + '"\n')
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert len(str(info.value)) < 1000
    assert "unknown mode 'xxx" in str(info.value) and "choose one of strict" in str(info.value)
    assert len(info.value.value) == 5_000_000  # the attribute keeps the value


def test_a_deeply_nested_value_is_quoted_short_in_the_error():
    value = [[["x" * 1000] * 1000] * 1000]
    with pytest.raises(PolicyError) as info:
        SandboxConfig.from_mapping({"memory_mb": value})
    assert len(str(info.value)) < 1000


def test_a_policy_file_that_is_not_utf8_names_the_file_and_the_offset(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_bytes(b'mode: "str\xffict"\n')
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert str(info.value) == (
        f"cannot read policy file {path}: not UTF-8 text (byte 0xff at offset 10)"
    )
    assert info.value.key == "config"


@pytest.mark.parametrize("value", [1, 4, 8, _config.MIN_OPEN_FILES - 1])
def test_too_few_open_files_are_refused_naming_the_minimum(value, tmp_path):
    with pytest.raises(PolicyError) as info:
        SandboxConfig(max_open_files=value)
    assert info.value.key == "max_open_files"
    assert f"must be at least {_config.MIN_OPEN_FILES}" in str(info.value)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"max_open_files: {value}\n")
    with pytest.raises(PolicyError) as info:
        _config.load_policy_file(str(policy))
    assert f"at least {_config.MIN_OPEN_FILES}" in str(info.value)


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
@pytest.mark.parametrize("mode", ["strict", "moderate", "permissive"])
def test_the_minimum_of_open_files_runs_on_both_tiers(mode, tier, workspace):
    from stockade import SandboxManager

    manager = SandboxManager(SandboxConfig(
        mode=mode, tier=tier, execution_log=False, hidden=("/etc/shadow",),
        max_open_files=_config.MIN_OPEN_FILES,
    ))
    decision = manager.decide()
    if not decision.ok:
        pytest.skip(f"this host cannot run tier {tier}: {decision.error()}")
    result = manager.execute(
        ["/usr/bin/python3", "-c", "import resource; print(resource.getrlimit(7)[0])"],
        cwd=workspace,
    )
    assert result.success, (result.summary(), result.error, result.stderr_text)
    assert result.stdout_text.strip() == str(_config.MIN_OPEN_FILES)


@pytest.mark.parametrize("entry", ["/", ".", "./", "//", "/a/../b", "../x", "a/../../b"])
def test_protected_entries_outside_any_writable_place_are_refused(entry):
    with pytest.raises(PolicyError) as info:
        SandboxConfig(protected=[entry])
    assert info.value.key == "protected"
    assert "protected path" in str(info.value)


def test_protected_entries_relative_or_absolute_inside_are_kept():
    kept = ("/srv/project/secrets", ".git/hooks", "sub/dir")
    assert SandboxConfig(protected=kept).protected == kept


def test_an_empty_workspace_is_refused():
    # (Path("") is Path("."), which names the current directory on purpose)
    with pytest.raises(PolicyError) as info:
        SandboxConfig(workspace="")
    assert info.value.key == "workspace" and "empty" in str(info.value)


# -- feature flags: one place per field, limits only under the limits ---------

REPRO_MODE_IN_LIMITS = """\
security:
  sandbox_enabled: true
  sandbox_mode: strict
  sandbox_resource_limits:
    cpu_time_sec: 60
    mode: disabled
    network: loopback
"""


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ("mode: disabled", "mode"),
        ("network: loopback", "network"),
        ("tier: landlock", "tier"),
        ("allow_degraded: [namespaces]", "allow_degraded"),
        ("writable: ['/']", "writable"),
        ("hidden: []", "hidden"),
        ("output_limit_action: truncate", "output_limit_action"),
        ("workspace: /", "workspace"),
    ],
)
def test_policy_fields_under_resource_limits_are_refused(tmp_path, limits, key):
    path = write(tmp_path, "flags.yaml",
                 f"security:\n  sandbox_mode: strict\n  sandbox_resource_limits:\n    {limits}\n")
    for load in (load_policy_file, create_sandbox_from_feature_flags):
        with pytest.raises(PolicyError) as info:
            load(path)
        assert info.value.key == f"security.sandbox_resource_limits.{key}"
        message = str(info.value)
        assert "\n" not in message
        assert "is not a resource limit" in message and "security.sandbox_policy" in message


def test_the_trial_repro_is_refused(tmp_path):
    path = write(tmp_path, "rl.yaml", REPRO_MODE_IN_LIMITS)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.key == "security.sandbox_resource_limits.mode"
    assert info.value.value == "disabled"


def test_every_documented_limit_is_accepted_under_resource_limits(tmp_path):
    from stockade.config import FLAG_LIMIT_KEYS

    values = {
        "memory_mb": 256, "cpu_time_sec": 30, "cpu_cores": 1.5, "max_processes": 64,
        "max_file_size_mb": 10, "max_open_files": 256, "disk_mb": 50, "timeout_sec": 20,
        "max_output_bytes": 4096,
    }
    assert set(values) == set(FLAG_LIMIT_KEYS)
    assert set(FLAG_LIMIT_KEYS) <= set(SandboxConfig.model_fields)
    text = "security:\n  sandbox_mode: strict\n  sandbox_resource_limits:\n" + "".join(
        f"    {key}: {value}\n" for key, value in values.items()
    )
    config = load_policy_file(write(tmp_path, "flags.yaml", text))
    assert config.mode is SandboxMode.STRICT
    assert {key: getattr(config, key) for key in values} == values


def test_policy_fields_under_sandbox_policy_still_work(tmp_path):
    text = ("security:\n  sandbox_enabled: true\n  sandbox_resource_limits: {memory_mb: 128}\n"
            "  sandbox_policy: {mode: permissive, network: loopback, disk_mb: 20}\n")
    config = load_policy_file(write(tmp_path, "flags.yaml", text))
    assert config.mode is SandboxMode.PERMISSIVE
    assert config.network.mode == "loopback"
    assert (config.memory_mb, config.disk_mb) == (128, 20)


@pytest.mark.parametrize(
    ("security", "first", "second"),
    [
        ("  sandbox_mode: strict\n  sandbox_policy: {mode: permissive}\n",
         "security.sandbox_mode", "security.sandbox_policy.mode"),
        # the same value twice is refused too: one place per field
        ("  sandbox_mode: strict\n  sandbox_policy: {mode: strict}\n",
         "security.sandbox_mode", "security.sandbox_policy.mode"),
        ("  sandbox_enabled: false\n  sandbox_policy: {mode: strict}\n",
         "security.sandbox_enabled", "security.sandbox_policy.mode"),
        ("  sandbox_enabled: false\n  sandbox_policy: {mode: Moderate}\n",
         "security.sandbox_enabled", "security.sandbox_policy.mode"),
        ("  sandbox_resource_limits: {memory_mb: 100}\n  sandbox_policy: {memory_mb: 200}\n",
         "security.sandbox_resource_limits.memory_mb", "security.sandbox_policy.memory_mb"),
        ("  sandbox_resource_limits: {timeout_sec: 5}\n  sandbox_policy: {timeout_sec: 5}\n",
         "security.sandbox_resource_limits.timeout_sec", "security.sandbox_policy.timeout_sec"),
    ],
)
def test_a_field_set_in_two_places_is_ambiguous(tmp_path, security, first, second):
    path = write(tmp_path, "flags.yaml", "security:\n" + security)
    for load in (load_policy_file, create_sandbox_from_feature_flags):
        with pytest.raises(PolicyError) as info:
            load(path)
        message = str(info.value)
        assert first in message and second in message and "ambiguous" in message, message
        assert "\n" not in message
        assert info.value.key == second


def test_disabled_in_both_places_is_consistent_not_ambiguous(tmp_path):
    text = "security:\n  sandbox_enabled: false\n  sandbox_policy: {mode: DISABLED}\n"
    assert load_policy_file(write(tmp_path, "flags.yaml", text)).mode is SandboxMode.DISABLED


def test_sandbox_policy_mode_alone_sets_the_mode(tmp_path):
    text = "security:\n  sandbox_policy: {mode: strict}\n"
    assert load_policy_file(write(tmp_path, "flags.yaml", text)).mode is SandboxMode.STRICT


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ("security:\n  sandbox_mode: strict\n  sandbox_mode: disabled\n",
         "line 3, column 3", "sandbox_mode"),
        ("mode: strict\nmode: disabled\n", "line 2, column 1", "mode"),
        ("security:\n  sandbox_resource_limits:\n    memory_mb: 64\n    memory_mb: 4096\n",
         "line 4, column 5", "memory_mb"),
        ("security: {sandbox_mode: strict}\nsecurity: {sandbox_enabled: false}\n",
         "line 2, column 1", "security"),
        # a merge key cannot smuggle in a second value either
        ("<<: {mode: strict}\nmode: disabled\n", "line 2, column 1", "mode"),
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path, text, where, key):
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert f"{where}: duplicate key {key!r}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        'mode = "strict"\nmode = "disabled"\n',
        '[security]\nsandbox_mode = "strict"\n[security]\nsandbox_mode = "disabled"\n',
    ],
)
def test_duplicate_toml_keys_are_refused(tmp_path, text):
    with pytest.raises(PolicyError) as info:
        load_policy_file(write(tmp_path, "policy.toml", text))
    assert "cannot parse policy file" in str(info.value)
