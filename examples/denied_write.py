"""Tries to write outside its workspace; the sandbox refuses.

    stockade run --workspace /tmp/stockade-demo -- python3 - /etc/hostname ~/.bashrc < examples/denied_write.py

Each target path is tried for writing; the script reports what happened and
exits 0 when every attempt was refused (the host files are untouched).
"""

import sys

targets = sys.argv[1:] or ["/etc/hostname", "/tmp/outside-the-sandbox.txt"]
refused = 0
for path in targets:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("written from the sandbox\n")
    except OSError as err:
        refused += 1
        print(f"refused: {path}: {err.strerror}")
    else:
        print(f"WRITTEN: {path}")
sys.exit(0 if refused == len(targets) else 1)
