"""``python -m offloop.cli``: the ``offloop`` command."""

import sys

from offloop.cli import main

if __name__ == "__main__":
    sys.exit(main())
