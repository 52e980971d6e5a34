"""Fails when the executed notebooks are not fit to commit.

Usage: ``python scripts/check_notebooks.py [NOTEBOOK ...]`` (default: ``notebooks/*.ipynb``).
Prints one line per problem (TensorFlow start-up lines, ``../`` or machine paths in outputs or
injected parameters, a notebook over 1 MiB, notebooks from different runs) and exits 1 if
there is any; see ``cnnlab.notebooks.check_notebooks``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cnnlab.notebooks import check_notebooks


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(Path(__file__).parents[1].glob("notebooks/*.ipynb"))
    problems = check_notebooks(paths)
    for problem in problems:
        print(problem)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
