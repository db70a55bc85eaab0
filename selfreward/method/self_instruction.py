"""Self-instruction creation, AIFT(M_t): new prompts, N candidates, self-judged, preference pairs.

Every candidate is saved with its judgments and scores, not only the pairs built from them.
"""
from __future__ import annotations

import random

from selfreward.method.self_judge import score_groups
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


def sample_candidates(backend, chat, prompts: list[str], candidates_cfg, seed: int) -> list[dict]:
    """N sampled responses per prompt, not yet judged: one record per prompt."""
    outputs = backend.generate([chat.prompt(p) for p in prompts], n=candidates_cfg.n,
                               temperature=candidates_cfg.temperature, top_p=candidates_cfg.top_p,
                               max_new_tokens=candidates_cfg.max_new_tokens, seed=seed, desc="candidates")
    return [{"prompt": prompt, "candidates": [{"response": c.text, "num_tokens": c.num_tokens, "finished": c.finished}
                                              for c in completions]} for prompt, completions in zip(prompts, outputs, strict=True)]


def judge_candidates(backend, chat, records: list[dict], judge_cfg, seed: int, desc: str = "self-judging") -> list[dict]:
    """Each candidate judged k times by `backend`'s model: its mean `score` and its judgments (`judge`)."""
    judged = score_groups(backend, chat, [(r["prompt"], [c["response"] for c in r["candidates"]]) for r in records],
                          judge_cfg, seed=seed, desc=desc)
    return [{**r, "candidates": [{**c, "score": result.score, "judge": result.to_dict()}
                                 for c, result in zip(r["candidates"], results, strict=True)]} for r, results in zip(records, judged, strict=True)]


def candidates_and_judgments(backend, chat, prompts: list[str], candidates_cfg, judge_cfg, seed: int) -> list[dict]:
    """N sampled responses per prompt, each judged k times by the same model."""
    return judge_candidates(backend, chat, sample_candidates(backend, chat, prompts, candidates_cfg, seed), judge_cfg,
                            seed + 1)


def usable(candidate: dict) -> bool:
    """A candidate that can enter a pair or the positives: scored, not empty, and finished (ended before the
    length limit: a cut answer is not the answer its model would give, and the paper's candidates are whole)."""
    return candidate["score"] is not None and bool(candidate["response"].strip()) and candidate.get("finished", True)


def best_and_worst(scored: list[dict]) -> tuple[dict, dict] | None:
    """The paper's pair: the highest-scored candidate chosen, the lowest rejected."""
    if len(scored) < 2:
        return None
    return max(scored, key=lambda c: c["score"]), min(scored, key=lambda c: c["score"])


def pair(prompt: str, chosen: dict, rejected: dict) -> dict | None:
    """A preference pair, or None where it teaches nothing (a score tie, or the same text twice)."""
    if chosen["score"] <= rejected["score"] or chosen["response"].strip() == rejected["response"].strip():
        return None
    return {"prompt": prompt, "chosen": chosen["response"], "rejected": rejected["response"],
            "chosen_score": chosen["score"], "rejected_score": rejected["score"]}


def preference_pairs(records: list[dict], choose=best_and_worst) -> list[dict]:
    """One pair per prompt from its usable candidates, chosen and rejected as `choose` says (the paper: the
    highest- and lowest-scored); prompts whose candidates tie give none."""
    found = []
    for record in records:
        picked = choose([c for c in record["candidates"] if usable(c)])
        made = picked and pair(record["prompt"], *picked)
        if made:
            found.append(made)
    return found


def positive_examples(records: list[dict]) -> list[dict]:
    """The positive-only variant's training data: candidates whose averaged score is the maximum, 5."""
    return [{"prompt": r["prompt"], "response": c["response"], "score": c["score"]}
            for r in records for c in r["candidates"] if usable(c) and c["score"] >= MAX_SCORE]
