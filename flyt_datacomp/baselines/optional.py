"""Optional packages of the baselines, imported only when a rule needs them.

DataComp's filters use fastText (language id, tokens), NLTK's WordNet (text-based) and gcld3
(LAION-2B's language id). None of them is needed by the rest of the package, so they live in the
``baselines`` extra (gcld3, which builds from source with the protobuf compiler, in ``gcld3``); a
missing one is a clear error naming the package and the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import FlytInputError

# module -> (what needs it, pip requirement, extra that installs it)
PACKAGES = {
    "fasttext": ("fastText language identification", "fasttext-wheel", "baselines"),
    "nltk": ("WordNet look-ups (the text_based baseline)", "nltk", "baselines"),
    "gcld3": ("gcld3 language identification (the laion2b baseline)", "gcld3", "gcld3"),
}


def require(module: str) -> ModuleType:
    """Import an optional package, or raise an input error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what, requirement, extra = PACKAGES[module]
        hint = ""
        if module == "gcld3":
            hint = " (it builds from source: install the protobuf compiler first, e.g. apt-get install protobuf-compiler " \
                   "libprotobuf-dev)"
        raise FlytInputError(
            f"{what} needs the Python package {requirement!r}, which is not installed ({exc}). "
            f"Install it with: pip install 'flyt-datacomp[{extra}]'{hint}"
        ) from None
