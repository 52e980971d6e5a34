"""Publishes a course project's run and writes docs/course_projects.md and README's results.

Usage:
  python scripts/course_projects.py               # the page, from what is published
  python scripts/course_projects.py KEY RUN_ID    # publish reports/RUN_ID as KEY, then the page
  python scripts/course_projects.py --run KEY     # run KEY's command here, publish, the page

See ``cnnlab.course_projects``; nothing is published if ``scripts/check_notebooks.py`` would
fail on the run's notebooks.
"""

from __future__ import annotations

import subprocess
import sys

from cnnlab.course_projects import (
    publish_course_run,
    run_course_project,
    write_course_projects_page,
)
from cnnlab.results import write_readme_results


def main(argv: list[str]) -> int:
    if len(argv) not in (0, 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv and argv[0] == "--run":
            for path in run_course_project(argv[1]):
                print(path)
        elif argv:
            for path in publish_course_run(*argv):
                print(path)
        print(write_course_projects_page())
        print(write_readme_results())
    except (KeyError, FileNotFoundError, ValueError, subprocess.CalledProcessError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
