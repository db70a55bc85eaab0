"""selfreward: Self-Rewarding Language Models (Yuan et al., 2024), small and readable.

The package in layers; a module imports only from its own layer and the ones below it:

    cli.py                the command line
    run/                  the run and its book: stages, pipeline, notebooks, book, results, compare, plan
    evaluation/           the instruments that measure the models; estimates and judge health
    method/               the method: data, prompts, judging, EFT, self-instruction, training, the loop
    generation/           engines behind one contract: plain, fast (CPU), vLLM
    config/ models.py paper.py rundir.py io.py    the foundation: params, model specs, the paper, paths, files
"""
from pathlib import Path

__version__ = "0.1.0"

CHECKOUT = Path(__file__).resolve().parent.parent  # the checkout (or install) folder holding notebooks/ and book/
