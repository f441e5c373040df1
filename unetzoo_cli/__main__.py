"""``python -m unetzoo_cli predict ...``: the same as the ``unetzoo`` console script."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
