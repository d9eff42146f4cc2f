"""`python -m shapedsde.cli ...`: the same CLI as the `shapedsde` console script."""

import sys

from .app import main

sys.exit(main())
