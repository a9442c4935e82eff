"""``python -m robustdistiller.export``: the export command (see :func:`robustdistiller.export.cli.main`)."""

import sys

from robustdistiller.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
