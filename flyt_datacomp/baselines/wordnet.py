"""First-synset offsets from NLTK's WordNet, as DataComp's text-based filter looks words up.

DataComp calls ``nltk.corpus.wordnet.synsets(word)`` for each word of ``caption.split()`` and takes
the first synset's ``offset()``. This module does the same with the same object, so NLTK's own
lower-casing, morphology (``dogs`` -> ``dog``, the exception lists) and part-of-speech order apply.
The corpus is NLTK's ``wordnet`` data package, found on NLTK's search path (``$NLTK_DATA``,
``~/nltk_data``, ...) or in the folder given with ``--wordnet-data``; it is never downloaded here.
Offsets are cached per word, per process.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import FlytInputError
from .optional import require


def use_wordnet(data_dir: str | None) -> None:
    """Put ``data_dir`` (an nltk_data folder) first on NLTK's path and check the corpus is there."""
    nltk = require("nltk")
    if data_dir is not None and data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        where = f"in {data_dir} or " if data_dir else ""
        raise FlytInputError(
            f"the WordNet corpus (NLTK's 'wordnet' data package) was not found {where}on NLTK's data path "
            f"({', '.join(map(str, nltk.data.path))}). DataComp gets it with nltk.download('wordnet'); on a machine "
            "with internet run: python -m nltk.downloader -d DIR wordnet, then give `wordnet_data` DIR",
            params=["wordnet_data"]
        ) from None


@lru_cache(maxsize=1 << 20)
def first_synset_offset(word: str) -> int | None:
    from nltk.corpus import wordnet

    synsets = wordnet.synsets(word)
    return synsets[0].offset() if synsets else None
