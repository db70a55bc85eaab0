"""The run and its book: `stages` (the plan: each stage once, built by small builders), `pipeline` (papermill,
skipping what has not changed), `manifest` (each stage's record; why a stage must run again; what is stale),
`notebook` (a stage notebook's entry, under the pipeline or re-run by hand), `records` (the run folder's lock and
output records), `notebooks` (the executed notebooks, from the templates in notebooks/), `book` (Jupyter Book),
`report` and `chapters` (what the chapters show), `compare` (two runs side by side), `lab` (Jupyter on a run's
notebooks) and `sizing` (`selfreward plan`). This package may import everything below it: evaluation, method,
generation and the foundation."""
