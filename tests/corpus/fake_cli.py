"""A stand-in for `stockade run` that runs the command WITHOUT any sandbox.

Used only by test_harness_self.py to show that the corpus checks catch an
escape: ``fake_cli.py run [options] -- CMD...`` ignores the options and execs
CMD with the caller's environment and descriptors, as a careless runner would.
Never used for cases that are not ``safe_unsandboxed``.
"""

import os
import sys

argv = sys.argv[1:]
command = argv[argv.index("--") + 1 :]
os.execvp(command[0], command)
