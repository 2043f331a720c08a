"""``python -m engine``: the same CLI as ``scripts/run.py`` and ``plasticity``."""

import sys

from engine.cli.main import main

sys.exit(main())
