"""A git-script: make a repository in the workspace, commit, branch, merge, log.

Run it in the sandbox (moderate mode, network off):

    stockade run --workspace /tmp/stockade-demo -- python3 - < examples/git_script.py

Everything happens in ./demo-repo under the workspace (removed first if it
exists). It prints the log and exits 0 when the merge produced both files.
"""

import os
import shutil
import subprocess
import sys

REPO = os.path.join(os.getcwd(), "demo-repo")
IDENTITY = ["-c", "user.name=Stockade Demo", "-c", "user.email=demo@example.invalid"]


def git(*args: str) -> str:
    proc = subprocess.run(
        ["git", *IDENTITY, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def write(name: str, text: str) -> None:
    with open(os.path.join(REPO, name), "w", encoding="utf-8") as fh:
        fh.write(text)


shutil.rmtree(REPO, ignore_errors=True)
os.makedirs(REPO)
git("init", "-q", "-b", "main")
write("README.md", "# demo\n")
git("add", "README.md")
git("commit", "-q", "-m", "first commit")

git("checkout", "-q", "-b", "feature")
write("feature.txt", "made on a branch\n")
git("add", "feature.txt")
git("commit", "-q", "-m", "add feature.txt")

git("checkout", "-q", "main")
write("CHANGES.md", "- merged the feature branch\n")
git("add", "CHANGES.md")
git("commit", "-q", "-m", "note the merge")
git("merge", "-q", "--no-edit", "feature")

print(git("log", "--oneline", "--graph", "--all"), end="")
files = sorted(git("ls-files").split())
print("files:", ", ".join(files))
sys.exit(0 if files == ["CHANGES.md", "README.md", "feature.txt"] else 1)
