"""What every figure of cnnlab shows a reader: a title, and labels on every axis it draws."""

from __future__ import annotations

from matplotlib.figure import Figure


def figure_title(fig: Figure) -> str:
    """The suptitle, else the titles of the axes, joined."""
    if fig._suptitle is not None and fig._suptitle.get_text().strip():
        return fig._suptitle.get_text()
    return " ".join(ax.get_title() for ax in fig.axes if ax.get_title().strip())


def assert_readable(fig: Figure, name: str = "") -> None:
    """A title, and x and y labels on every visible data axes (one label on a colour bar).

    Photo panels (axes switched off, or an image without ticks) need no axis labels: they are
    titled, or labelled by row, instead.
    """
    assert isinstance(fig, Figure), name
    assert figure_title(fig).strip(), f"{name}: the figure has no title"
    for ax in fig.axes:
        photo = bool(ax.images) and not ax.get_xticks().size and not ax.get_yticks().size
        if not ax.axison or photo:
            continue
        if ax.get_label() == "<colorbar>":
            assert (ax.get_ylabel() or ax.get_xlabel()).strip(), f"{name}: unlabelled colour bar"
            continue
        assert ax.get_xlabel().strip(), f"{name}: an axes has no x label"
        assert ax.get_ylabel().strip(), f"{name}: an axes has no y label ({ax.get_xlabel()})"
