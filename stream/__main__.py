"""`python -m stream ...` is the same as the `engage` console script."""

import sys

from stream.cli import main

sys.exit(main())
