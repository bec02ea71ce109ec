"""``python -m stockade``: the same as the ``stockade`` command."""

import sys

from .cli import main

sys.exit(main())
