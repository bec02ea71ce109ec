"""The file-system policy: path rules, protected paths, presets.

* ``policy.py`` resolves the policy's paths once, applies the precedence rule
  (the most specific path wins) and finds the protected paths;
* ``mounts.py`` turns the result into bubblewrap mounts (first tier);
* ``ruleset.py`` turns it into Landlock rules (second tier);
* ``guard.py`` checks, after a run, protected paths that could not be made
  read-only before it (they did not exist yet), or that the host replaced;
* ``watch.py`` watches, during a first-tier run, the host paths its mounts
  sit on (a host rename there undoes a mount: the run is ended);
* ``metadata.py`` puts back, after a second-tier run, the mode, owner, times
  and xattrs of the paths the policy names (Landlock does not cover them);
* ``presets.py`` holds the ready includes for python, node and git;
* ``run.py`` is what the manager calls, once per run.

See docs/filesystem.md for the rules as users see them.
"""
