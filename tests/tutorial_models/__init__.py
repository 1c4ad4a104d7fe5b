"""Model/guide pairs from Pyro's tutorials and examples, one file each (see README.md here), and
``load(name)``, which gives a fresh copy of one (its own module objects, networks and AutoGuides)."""

import importlib.util
import itertools
from pathlib import Path

MODELS = Path(__file__).parent
_loads = itertools.count()


def load(name: str):
    """A fresh copy of tests/tutorial_models/NAME.py (its own module objects, networks and AutoGuides)."""
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}_{next(_loads)}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
