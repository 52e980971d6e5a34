"""README, docs/ and the committed notebooks: links resolve, the README stays one or two
screens, the notebooks are clean outputs of one run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found, counts, in_code = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading and not in_code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = counts.get(slug, 0)
            counts[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"missing {target}")
        elif fragment and destination.suffix == ".md" and fragment not in _anchors(destination):
            broken.append(f"no heading for {target}")
    assert broken == []


def test_the_readme_fits_a_screen_or_two():
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) < 10_000


def test_committed_notebooks_are_seven_outputs_of_one_run_that_pass_every_check():
    """What a reader opens on GitHub: 01-07, no start-up logs or ``../`` paths, each under
    1 MiB, all from one ``cnnlab run`` (one run id, in order), and every other check of
    ``scripts/check_notebooks.py``."""
    from cnnlab.notebooks import NOTEBOOKS, check_notebooks

    committed = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [path.name for path in committed] == sorted(NOTEBOOKS)
    assert check_notebooks(committed) == []
