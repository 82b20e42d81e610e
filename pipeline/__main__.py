"""``python -m pipeline`` is the ``rvc-index`` command."""

import sys

from rvc_index.cli import main

sys.exit(main())
