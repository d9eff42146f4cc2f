"""`python -m shapedsde ...`: the same CLI as the `shapedsde` console script."""

import sys

from .cli import main

sys.exit(main())
