"""``python -m numbaconv``: the command line of :mod:`numbaconv.cli`."""

import sys

from numbaconv.cli import main

sys.exit(main())
