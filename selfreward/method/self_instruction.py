"""Self-instruction creation, AIFT(M_t): new prompts, N candidates, self-judged, preference pairs.

Every candidate is saved with its judgments and scores, not only the pairs built from them.
"""
from __future__ import annotations

import random

from selfreward.method.judging import score_groups
from selfreward.method.prompts import (MAX_SCORE, NearDuplicateIndex, check_prompt, extract_new_prompt,
                                self_instruct_prompt, sample_shots)


def new_prompts(backend, seed_prompts: list[str], instruct_cfg, seed: int) -> list[dict]:
    """Few-shot prompt generation with Self-Instruct filters; returns every attempt with its verdict.
    `instruct_cfg` is the `self_instruct` section."""
    rng = random.Random(seed)
    index = NearDuplicateIndex(seed_prompts, instruct_cfg.rouge_threshold)
    kept: list[str] = []
    records: list[dict] = []
    chunk = backend.batch_size  # later rounds can show prompts kept in earlier ones
    for round_no, start in enumerate(range(0, instruct_cfg.num_prompts, chunk)):
        count = min(chunk, instruct_cfg.num_prompts - start)
        fewshot = [self_instruct_prompt(sample_shots(seed_prompts, kept, instruct_cfg.seed_shots,
                                                     instruct_cfg.generated_shots, rng)) for _ in range(count)]
        outputs = backend.generate(fewshot, n=1, temperature=instruct_cfg.temperature, top_p=instruct_cfg.top_p,
                                   max_new_tokens=instruct_cfg.max_new_tokens, seed=seed * 1000 + round_no,
                                   desc=f"new prompts {start + count}/{instruct_cfg.num_prompts}",
                                   stop_strings=["\nTask"])
        for (completion,) in outputs:
            text = extract_new_prompt(completion.text)
            check = check_prompt(text, index, instruct_cfg.min_words, instruct_cfg.max_words)
            if check.kept:
                index.add(text)
                kept.append(text)
            records.append({"prompt": text, "raw": completion.text, "kept": check.kept, "reason": check.reason,
                            "similarity": round(check.similarity, 4), "num_tokens": completion.num_tokens})
    return records


def candidates_and_judgments(backend, chat, prompts: list[str], candidates_cfg, judge_cfg, seed: int) -> list[dict]:
    """N sampled responses per prompt, each judged k times by the same model."""
    outputs = backend.generate([chat.prompt(p) for p in prompts], n=candidates_cfg.n,
                               temperature=candidates_cfg.temperature, top_p=candidates_cfg.top_p,
                               max_new_tokens=candidates_cfg.max_new_tokens, seed=seed, desc="candidates")
    judged = score_groups(backend, chat, [(p, [c.text for c in completions]) for p, completions in zip(prompts, outputs)],
                          judge_cfg, seed=seed + 1, desc="self-judging")
    return [{"prompt": prompt, "candidates": [
                {"response": c.text, "num_tokens": c.num_tokens, "finished": c.finished, "score": result.score,
                 "judge": result.to_dict()} for c, result in zip(completions, results)]}
            for prompt, completions, results in zip(prompts, outputs, judged)]


def usable(candidate: dict) -> bool:
    """A candidate that can enter a pair or the positives: scored, not empty, and finished (ended before the
    length limit: a cut answer is not the answer its model would give, and the paper's candidates are whole)."""
    return candidate["score"] is not None and bool(candidate["response"].strip()) and candidate.get("finished", True)


def preference_pairs(records: list[dict]) -> list[dict]:
    """Highest-scored usable candidate = chosen, lowest = rejected; equal scores give no pair."""
    pairs = []
    for record in records:
        scored = [c for c in record["candidates"] if usable(c)]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda c: c["score"])
        worst = min(scored, key=lambda c: c["score"])
        if best["score"] == worst["score"] or best["response"].strip() == worst["response"].strip():
            continue  # a tie, or the same text twice, teaches nothing
        pairs.append({"prompt": record["prompt"], "chosen": best["response"], "rejected": worst["response"],
                      "chosen_score": best["score"], "rejected_score": worst["score"]})
    return pairs


def positive_examples(records: list[dict]) -> list[dict]:
    """The positive-only variant's training data: candidates whose averaged score is the maximum, 5."""
    return [{"prompt": r["prompt"], "response": c["response"], "score": c["score"]}
            for r in records for c in r["candidates"] if usable(c) and c["score"] >= MAX_SCORE]
