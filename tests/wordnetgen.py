"""A tiny WordNet database in the files-and-byte-offsets format NLTK's WordNet reader reads.

Real WordNet cannot be downloaded in tests; this writes ``<root>/corpora/wordnet/`` with a handful
of synsets, so ``nltk.corpus.wordnet`` (with ``root`` on ``nltk.data.path``) behaves like the real
corpus for lookups: ``synsets(word)`` lower-cases, applies morphy (``dogs`` -> ``dog``, the
exception lists) and returns synsets in NLTK's part-of-speech order. A synset's ``offset()`` is the
byte offset of its line in ``data.<pos>``, as in the real database.
"""

from __future__ import annotations

from pathlib import Path

_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_LEXNAMES = {"n": (3, "noun.Tops"), "v": (29, "verb.body"), "a": (0, "adj.all"), "r": (2, "adv.all")}
_HEADER = "  1 This is a tiny test database in the WordNet 3.0 Copyright 2006 format.\n"


def write_wordnet(root: Path, synsets: list[tuple[str, list[str]]], exceptions: dict[str, dict[str, str]] | None = None,
                  padding: dict[str, int] | None = None) -> dict[tuple[str, str], int]:
    """Write the database; ``synsets`` is a list of ``(pos, [lemmas])`` in sense order (a lemma listed
    in several synsets of one pos has them in this order). ``padding`` adds header lines to a pos's
    data file (moving its offsets). Returns ``{(pos, first lemma): offset}``."""
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    offsets: dict[tuple[str, str], int] = {}
    index: dict[str, dict[str, list[int]]] = {p: {} for p in _FILES}
    for pos, name in _FILES.items():
        text = _HEADER * (1 + (padding or {}).get(pos, 0))
        for spos, lemmas in synsets:
            if spos != pos:
                continue
            offset = len(text.encode())
            words = " ".join(f"{w} 0" for w in lemmas)
            text += f"{offset:08d} {_LEXNAMES[pos][0]:02d} {pos} {len(lemmas):02x} {words} 000 | a test synset\n"
            offsets[(pos, lemmas[0])] = offset
            for w in lemmas:
                index[pos].setdefault(w.lower(), []).append(offset)
        (folder / f"data.{name}").write_text(text)
        lines = [_HEADER]
        for lemma in sorted(index[pos]):
            offs = index[pos][lemma]
            lines.append(f"{lemma} {pos} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}\n")
        (folder / f"index.{name}").write_text("".join(lines))
        exc = (exceptions or {}).get(pos, {})
        (folder / f"{name}.exc").write_text("".join(f"{k} {v}\n" for k, v in sorted(exc.items())))
    (folder / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{i}\n" for i, n in enumerate(_lexname_table())))
    (folder / "index.sense").write_text("")
    (folder / "cntlist.rev").write_text("")
    return offsets


def _lexname_table() -> list[str]:
    names = [f"lex.{i}" for i in range(45)]
    for number, name in _LEXNAMES.values():
        names[number] = name
    return names
