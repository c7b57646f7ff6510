"""python -m katran.lab: same as katran-lab."""

import sys

from .cli import main

sys.exit(main())
