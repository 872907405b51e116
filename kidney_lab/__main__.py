"""``python -m kidney_lab``: see :mod:`kidney_lab.cli`."""

import sys

from kidney_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
