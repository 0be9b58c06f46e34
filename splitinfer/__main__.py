"""``python -m splitinfer`` is the ``splitinfer`` command."""

import sys

from splitinfer.tools.cli import main

sys.exit(main())
