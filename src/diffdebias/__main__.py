"""``python -m diffdebias``: the ``diffdebias`` command, also under a launcher (``torchrun -m diffdebias run ...``,
``accelerate launch -m diffdebias run ...``)."""

import sys

from .cli import main

sys.exit(main())
