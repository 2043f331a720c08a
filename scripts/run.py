#!/usr/bin/env python3
"""Thin entry point: ``python scripts/run.py [OPTIONS] [COMMAND]`` (see ``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
