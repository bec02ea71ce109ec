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
