"""`python -m cfbi_model.cli` (e.g. under torchrun) runs the `cfbi` command line."""

import sys

from . import main

sys.exit(main())
