"""``python -m pipeline`` is the ``rvc-index`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
