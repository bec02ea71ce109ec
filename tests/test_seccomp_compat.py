"""The compatibility matrix of docs/filters.md, measured.

Every cell of ``syscall_groups.COMPATIBILITY`` is run through the real
sandbox in its mode, in both tiers (bubblewrap's namespaces, and the
Landlock tier where the program shares the host's network namespace and the
filter refuses more sockets): "runs" must succeed with the expected output;
"fails: ... (calls)" must fail, with the result naming one of those calls
as denied (so the failure is the filter's doing, not something else).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from stockade import SandboxConfig, SandboxManager
from stockade.linux.syscall_groups import COMPATIBILITY, MODES

TOOLS_PY = """\
import multiprocessing as mp
import subprocess
import threading


def square(x):
    return x * x


if __name__ == "__main__":
    out = subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip()
    seen = []
    threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with mp.Pool(2) as pool:
        squares = pool.map(square, range(5))
    with mp.Lock(), mp.Semaphore(2):
        pass
    queue = mp.Queue()
    child = mp.Process(target=queue.put, args=(42,))
    child.start()
    got = queue.get()
    child.join()
    print(out, sorted(seen), squares, got)
"""

PIPES_SH = """\
seq 1 100 | grep 7 | sort -rn | head -3 | tr '\\n' ' '
echo
x=$(echo hi | cat)
echo "$x" | wc -c
"""

GIT_SH = """\
set -e
mkdir repo && cd repo
git init -q -b main .
git config user.email t@example.invalid && git config user.name t
echo a > a.txt && git add a.txt && git commit -qm one
git branch feature && git checkout -q feature
echo b > b.txt && git add b.txt && git commit -qm two
git checkout -q main
echo c > c.txt && git add c.txt && git commit -qm three
git merge -q --no-edit feature
git log --oneline | wc -l
git diff HEAD~1 --stat | tail -1
"""

HELLO_C = (
    "#include <stdio.h>\n"
    'int main(void) { printf("hello %d\\n", 6 * 7); return 0; }\n'
)

# program key -> (argv, files to put in the workspace, expected stdout, tool)
PROGRAMS = {
    "true": (["/bin/true"], {}, "", "true"),
    "python": (
        ["python3", "-c", "open('out.txt', 'w').write(str(sum(range(1000))));"
         "print(open('out.txt').read())"],
        {}, "499500\n", "python3",
    ),
    "sh-exec": (["sh", "-c", "exec python3 -c 'print(6 * 7)'"], {}, "42\n", "python3"),
    "c-binary": (["./hello"], {}, "hello 42\n", "gcc"),
    "python-tools": (
        ["python3", "tools.py"], {"tools.py": TOOLS_PY},
        "sub [0, 1, 2, 3] [0, 1, 4, 9, 16] 42\n", "python3",
    ),
    "bash-pipes": (
        ["bash", "pipes.sh"], {"pipes.sh": PIPES_SH}, "97 87 79 \n3\n", "bash"
    ),
    "git": (
        ["bash", "git.sh"], {"git.sh": GIT_SH},
        "4\n 1 file changed, 1 insertion(+)\n", "git",
    ),
    "gcc": (
        ["sh", "-c", "gcc -o built hello.c && ./built"], {"hello.c": HELLO_C},
        "hello 42\n", "gcc",
    ),
    "node": (
        ["node", "-e", "console.log([1, 2, 3].map(x => x * 2).join(','))"],
        {}, "2,4,6\n", "node",
    ),
    "sqlite3": (
        ["sqlite3", "db.sqlite", "create table t(x); insert into t values (1), (2); "
         "select sum(x) from t;"],
        {}, "3\n", "sqlite3",
    ),
}


def test_every_matrix_row_has_a_program():
    assert set(PROGRAMS) == set(COMPATIBILITY)


_TIER_OK: dict[str, str | None] = {}


def _tier_unavailable(tier: str) -> str | None:
    """Why this host cannot run the tier, or None."""
    if tier not in _TIER_OK:
        decision = SandboxManager(SandboxConfig(tier=tier, execution_log=False)).decide()
        _TIER_OK[tier] = None if decision.ok else str(decision.error())
    return _TIER_OK[tier]


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", list(COMPATIBILITY))
def test_compatibility_cell(key, mode, tier, workspace):
    argv, files, expected, tool = PROGRAMS[key]
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed")
    why = _tier_unavailable(tier)
    if why:
        pytest.skip(f"this host cannot run tier {tier}: {why}")
    for name, text in files.items():
        (workspace / name).write_text(text)
    if key == "c-binary":
        source = workspace / "hello.c"
        source.write_text(HELLO_C)
        subprocess.run(["gcc", "-o", str(workspace / "hello"), str(source)], check=True)
    # system tools only: the caller's PATH may hold shims (pyenv) or venvs
    config = SandboxConfig(
        mode=mode,
        tier=tier,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        execution_log=False,
        timeout_sec=60,
    )
    manager = SandboxManager(config)

    result = manager.execute(argv, cwd=workspace)

    cell = COMPATIBILITY[key][1][mode]
    if cell == "runs":
        assert result.success, (result.summary(), result.stderr_text[-2000:])
        assert result.stdout_text == expected
        return
    match = re.fullmatch(r"fails: .* \((?P<calls>[\w/]+)\)", cell)
    assert match, f"malformed matrix cell {cell!r}"
    assert not result.success, f"{key} runs in {mode}, but the docs say {cell!r}"
    denied = {v.what for v in result.violations if v.mechanism == "seccomp"}
    assert denied & set(match["calls"].split("/")), (result.summary(), denied)

