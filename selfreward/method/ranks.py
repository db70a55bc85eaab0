"""How scores order replies against human ranks (0 = best): the rules that EFT's agreement filter and the
reward-model metrics share, so that "agrees with the humans" means one thing everywhere."""
from __future__ import annotations


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_outcomes(scores: list, ranks: list[int]) -> tuple[int, int, int]:
    """(correct, tied, total) over reply pairs with different human ranks and readable scores."""
    correct = tied = total = 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j] or scores[i] is None or scores[j] is None:
                continue
            total += 1
            if scores[i] == scores[j]:
                tied += 1
            elif _sign(scores[i] - scores[j]) == _sign(ranks[j] - ranks[i]):
                correct += 1
    return correct, tied, total


def orders_as_humans(scores: list, ranks: list[int]) -> bool:
    """Every score readable, and for every two replies with different human ranks the better-ranked
    one (lower rank) has the strictly higher score; a score tie between them is a disagreement."""
    if any(s is None for s in scores):
        return False
    return all(scores[i] > scores[j] for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j])
