"""`python -m dnsd`: the same as the `dnsd` command."""

import sys

from dnsd.cli import main

if __name__ == "__main__":
    sys.exit(main())
