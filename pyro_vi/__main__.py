"""``python -m pyro_vi`` (and ``torchrun -m pyro_vi``) runs the ``pyro-vi`` command."""

import sys

from pyro_vi.cli import main

sys.exit(main())
