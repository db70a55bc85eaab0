"""The method: everything the paper's loop does, and nothing about measuring it.

`data` (OASST and AlpacaEval, hub or mirror; the seed sets), `prompts` (templates as data and their
parsers), `self_judge` (k judgments per response, sampled or constrained), `ranks` (how scores order replies
against human ranks), `eft` (EFT data from agreeing judgments), `self_instruction` (new prompts,
candidates, preference pairs), `evaluation_judge` (the evaluation judge: pairwise verdicts and ratings, local or an
endpoint), `training` (SFT and DPO with TRL; `lean` its fast losses), `launch` and `worker` (training over
several processes), `model_refs` (what a model name of the params means) and `loop` (the training stages).
This package may import `generation` and the foundation (config, models, paper, rundir, io), nothing above.
"""
