"""The run and its book: `stages` (the plan: each stage once), `pipeline` (papermill, the manifest,
skipping what has not changed), `records` (the run folder's lock and output records), `notebooks` (the
executed notebooks, from the templates in notebooks/), `book` (Jupyter Book), `report` and `chapters`
(what the chapters show), `compare` (two runs side by side) and `sizing` (`selfreward plan`). This
package may import everything below it: evaluation, method, generation and the foundation."""
import pandas as pd

# the chapters show whole tables: every headline row, and cells that hold sentences (verdicts, judge health)
pd.set_option("display.max_rows", 1000)
pd.set_option("display.max_colwidth", 400)
