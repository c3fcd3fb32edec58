"""``python -m sim``: the moesim command line (:mod:`sim.app.cli`)."""

import sys

from sim.app.cli import main

sys.exit(main())
