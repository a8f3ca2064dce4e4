"""``python -m maxtoki.cli``: the ``maxtoki`` command."""

import sys

from maxtoki.cli import main

sys.exit(main())
