"""``python -m trustlab``: the ``trustlab`` command."""

import sys

from trustlab.cli import main

sys.exit(main())
