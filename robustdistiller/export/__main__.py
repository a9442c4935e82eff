"""``python -m robustdistiller.export``: the export command (see :func:`robustdistiller.export.main`)."""

import sys

from robustdistiller.export import main

if __name__ == "__main__":
    sys.exit(main())
