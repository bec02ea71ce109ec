from stockade import Termination


def test_true_exits_zero(manager, workspace):
    result = manager.execute(["/bin/true"], cwd=workspace)
    assert result.success, result.summary()
    assert result.termination is Termination.EXITED


def test_exit_code_and_output(manager, workspace):
    result = manager.execute(["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=workspace)
    assert result.exit_code == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
