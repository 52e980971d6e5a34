"""Publishes one ``cnnlab run``: its notebooks, tables, figures, docs/results.md and README's table.

Usage: ``python scripts/publish_run.py RUN_ID`` after ``cnnlab run --run-id RUN_ID`` ran all
seven notebooks; see ``cnnlab.results.publish_run``. Nothing is published if
``scripts/check_notebooks.py`` would fail on the run's notebooks.
"""

import sys

from cnnlab.results import main

if __name__ == "__main__":
    sys.exit(main())
