"""Tries to write outside its workspace; the sandbox refuses.

    stockade run --workspace /tmp/stockade-demo -- python3 - /etc/hostname "$HOME/.bashrc" < examples/denied_write.py

Each path given is opened for appending. System files are read-only (or not
writable by the sandbox's uid), and the caller's home does not exist inside
the sandbox at all. Exits 0 when every attempt was refused, 1 otherwise.
"""

import sys

targets = sys.argv[1:] or ["/etc/hostname"]
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
