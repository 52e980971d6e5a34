"""Architecture diagrams for Keras 3 models.

``visualkeras`` (0.2.0) reads ``layer.output_shape`` for every layer in ``model.layers``. Keras 3
layers no longer have that attribute (only ``Functional``/``Sequential`` models keep it as a
property), so ``visualkeras.layered_view`` raises ``AttributeError`` on any Keras 3 model. This
module fixes that without patching ``visualkeras`` or the model for good: ``output_shapes_provided``
temporarily gives every layer an ``output_shape`` computed from the model graph and removes it again
afterwards.

Public API:

* :func:`layered_view` - ``visualkeras.layered_view`` that works on Keras 3.
* :func:`plot_architecture` - a matplotlib ``Figure`` with a layered, graph or table view. A
  nested backbone (``models.build_transfer_model``) is one block labelled with its name,
  parameter count and output shape, followed by the head's layers; a legend drawn by
  matplotlib names every block type.
* :func:`summary_frame` - per-layer summary (name, type, output shape, params, trainable).
* :func:`output_shapes_provided` - the context manager behind :func:`layered_view`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageFont

__all__ = [
    "KINDS",
    "layered_view",
    "output_shapes_provided",
    "plot_architecture",
    "summary_frame",
]

#: Views accepted by :func:`plot_architecture` (``"auto"`` tries the first three in order).
KINDS = ("layered", "graph", "table", "auto")

_ATTR = "output_shape"
_GRAPHVIZ_HINT = (
    "install the Graphviz `dot` binary: `apt-get install graphviz` (Debian/Ubuntu/Colab), "
    "`brew install graphviz` (macOS) or `conda install graphviz`"
)
# Defaults for the layered view inside plot_architecture: a legend and a modest image size.
_LAYERED_DEFAULTS: dict[str, Any] = {
    "legend": True,
    "sizing_mode": "balanced",
    "scale_xy": 2.0,
    "scale_z": 0.5,
    "max_xy": 240,
    "max_z": 160,
    "spacing": 12,
}
# visualkeras' own colour wheel, given to it per layer type so that the matplotlib legend
# shows the colours the boxes were drawn in.
_BOX_COLOURS = ("#ffd166", "#ef476f", "#118ab2", "#073b4c", "#842da1", "#ffbad4", "#fe9775",
                "#83d483", "#06d6a0", "#0cb0a9")
_BLOCK_FONT_PX = 14


# Output shapes                                                                                  #


def _layers_and_graph(model: Any) -> tuple[list[Any], set[int] | None]:
    """The model's layers and the ids of its graph nodes; ValueError if it has no layers."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"expected a Keras model with a `layers` attribute, got {type(model)!r}")
    return layers, _graph_node_ids(model)


def _graph_node_ids(model: Any) -> set[int] | None:
    """Return ``id()`` of every node of the model's own (outer) graph, or None if unknown."""
    graph = model
    if getattr(model, "_nodes_by_depth", None) is None:
        # keras.Sequential keeps its graph in a private Functional once it is built.
        graph = getattr(model, "_functional", None)
    nodes_by_depth = getattr(graph, "_nodes_by_depth", None)
    if not isinstance(nodes_by_depth, Mapping):
        return None
    return {id(node) for nodes in nodes_by_depth.values() for node in nodes}


def _as_shape(tensors: Any) -> tuple[Any, ...] | list[tuple[Any, ...]] | None:
    """Turn a tensor or a (nested) list of tensors into a shape tuple or a list of them."""
    if tensors is None:
        return None
    if isinstance(tensors, (list, tuple)):
        shapes = [_as_shape(t) for t in tensors]
        shapes = [s for s in shapes if s is not None]
        if not shapes:
            return None
        return shapes[0] if len(shapes) == 1 else shapes
    if isinstance(tensors, Mapping):
        return _as_shape(list(tensors.values()))
    shape = getattr(tensors, "shape", None)
    if shape is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def _layer_output_shape(layer: Any, node_ids: set[int] | None) -> Any:
    """Best-effort output shape of ``layer`` as it is used inside the outer model.

    The node of the outer graph is preferred over ``layer.output`` because ``output`` of a
    nested model is the output of its *own* graph (which can have ``None`` spatial dims when
    the backbone was built without an input shape).
    """
    if node_ids is not None:
        for node in getattr(layer, "_inbound_nodes", None) or []:
            if id(node) in node_ids:
                shape = _as_shape(getattr(node, "output_tensors", None))
                if shape is not None:
                    return shape
    try:
        return _as_shape(layer.output)
    except Exception:  # noqa: BLE001 - layer never called symbolically (subclassed model)
        return None


def _has_working_attr(layer: Any) -> bool:
    try:
        getattr(layer, _ATTR)
    except Exception:  # noqa: BLE001 - a property that raises counts as "missing"
        return False
    return True


@contextlib.contextmanager
def output_shapes_provided(model: Any) -> Iterator[dict[str, Any]]:
    """Temporarily give every layer of ``model`` the ``output_shape`` that Keras 2 had.

    Only ``model.layers`` (the top level) is adapted, so a nested model such as a
    ``keras.applications`` backbone stays a single layer. Layers that already have a working
    ``output_shape`` (e.g. a nested ``Functional`` model, whose class keeps it as a property)
    are left alone. The value is stored in the instance ``__dict__`` with ``object.__setattr__``
    (bypassing Keras' attribute tracking) and removed on exit, also when the body raises. Not
    thread-safe: do not use the same model concurrently.

    Args:
        model: A built Keras 3 model (``Sequential`` or functional).

    Yields:
        A dict ``{layer.name: output_shape}`` of the shapes that were added (``None`` where the
        shape could not be determined; ``visualkeras`` then draws a default-sized box).

    Raises:
        ValueError: If ``model`` has no ``layers`` attribute.
    """
    layers, node_ids = _layers_and_graph(model)
    patched: list[Any] = []
    added: dict[str, Any] = {}
    try:
        for layer in layers:
            if _has_working_attr(layer):
                continue
            static = inspect.getattr_static(layer, _ATTR, None)
            if static is not None and hasattr(static, "__set__"):
                # A class-level property that raises: an instance value would be ignored.
                continue
            shape = _layer_output_shape(layer, node_ids)
            object.__setattr__(layer, _ATTR, shape)
            patched.append(layer)
            added[layer.name] = shape
        yield added
    finally:
        for layer in patched:
            layer.__dict__.pop(_ATTR, None)


# Layered view                                                                                   #


def _import_visualkeras() -> Any:
    try:
        return importlib.import_module("visualkeras")
    except Exception as exc:  # ImportError, or a broken install failing at import time
        raise ImportError(
            "the layered architecture view needs `visualkeras` (pip install visualkeras); "
            f"importing it failed: {type(exc).__name__}: {exc}"
        ) from exc


def layered_view(model: Any, **kwargs: Any) -> Image.Image:
    """Draw ``model`` with ``visualkeras.layered_view``, made to work on Keras 3.

    Inside :func:`output_shapes_provided` every top-level layer gets a temporary
    ``output_shape`` (the only layer attribute ``visualkeras.layered_view`` reads that Keras 3
    dropped). Nested models (e.g. a ``keras.applications`` backbone) are drawn as one box. The
    model is unchanged afterwards.

    Args:
        model: A built Keras 3 model (``Sequential`` or functional).
        **kwargs: Passed to ``visualkeras.layered_view`` (``legend``, ``to_file``, ``scale_xy``,
            ``sizing_mode``, ...). ``legend_text_spacing_offset`` defaults to 0 here, which only
            silences visualkeras' deprecation warning for that unused parameter.

    Returns:
        The rendered diagram as an RGBA ``PIL.Image.Image``.

    Raises:
        ImportError: If ``visualkeras`` cannot be imported.
        ValueError: If ``model`` is not built (has no layer shapes yet).
        RuntimeError: If ``visualkeras.layered_view`` still fails on the adapted model.
    """
    visualkeras = _import_visualkeras()
    if not getattr(model, "built", True):
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} is not built: give it a keras.Input or "
            "call model.build(input_shape) before drawing it"
        )
    kwargs.setdefault("legend_text_spacing_offset", 0)
    with output_shapes_provided(model):
        try:
            image = visualkeras.layered_view(model, **kwargs)
        except Exception as exc:
            raise RuntimeError(
                f"visualkeras.layered_view failed on model {getattr(model, 'name', '?')!r} even "
                f"with the Keras 3 output_shape adapter: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(image, Image.Image) or image.width == 0 or image.height == 0:
        raise RuntimeError(f"visualkeras.layered_view returned no image (got {image!r})")
    return image


# Summary table                                                                                  #


def _format_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(_format_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _count_params(layer: Any) -> int:
    try:
        return int(layer.count_params())
    except Exception:  # noqa: BLE001 - an unbuilt layer has no weights yet
        return 0


def _is_nested_model(layer: Any) -> bool:
    """Whether a top-level layer is itself a model (a backbone), drawn as one block."""
    return isinstance(getattr(layer, "layers", None), list)


def _nested_models(model: Any) -> list[Any]:
    return [layer for layer in getattr(model, "layers", []) if _is_nested_model(layer)]


def _block_shape(shape: Any, times: str = "×") -> str:
    """``(None, 2, 2, 432)`` -> ``"2×2×432"`` (the batch axis left out)."""
    if not isinstance(shape, tuple) or not shape:
        return _format_shape(shape)
    return times.join("?" if d is None else str(d) for d in shape[1:]) or "scalar"


def _backbone_label(layer: Any, node_ids: set[int] | None, lines: bool = False) -> str:
    """``"backbone <name>: <params> params, output <h×w×c>"`` of a nested model.

    ``lines``: one line per fact, in ASCII (the label over the block, in PIL's font).
    """
    name = f"backbone {layer.name}" + ("" if getattr(layer, "trainable", True) else " (frozen)")
    params = f"{_count_params(layer):,} params"
    shape = _block_shape(_layer_output_shape(layer, node_ids), "x" if lines else "×")
    shape = f"output {shape}"
    return f"{name}\n{params}\n{shape}" if lines else f"{name}: {params}, {shape}"


def _default_title(model: Any) -> str:
    """The model's name, and for a transfer model its backbone and head layers."""
    name = str(getattr(model, "name", "model"))
    nested = _nested_models(model)
    if not nested:
        return name
    layers = list(model.layers)
    head = [layer.name for layer in layers[layers.index(nested[-1]) + 1:]]
    backbones = " + ".join(f"{b.name} ({_count_params(b):,} params)" for b in nested)
    return f"{name}: backbone {backbones}" + (f", head {' → '.join(head)}" if head else "")


def summary_frame(model: Any) -> pd.DataFrame:
    """Per-layer summary of the top level of ``model`` (nested models are one row).

    Args:
        model: A Keras 3 model (``Sequential`` or functional).

    Returns:
        A DataFrame with one row per entry of ``model.layers`` and the columns ``layer`` (name),
        ``type`` (class name), ``output_shape`` (string such as ``"(None, 56, 56, 100)"``, ``"?"``
        when unknown), ``params`` (int, all weights of the layer) and ``trainable`` (bool). For
        models without shared weights ``params.sum() == model.count_params()``.

    Raises:
        ValueError: If ``model`` has no ``layers`` attribute.
    """
    layers, node_ids = _layers_and_graph(model)
    rows = [
        {
            "layer": layer.name,
            "type": type(layer).__name__,
            "output_shape": _format_shape(_layer_output_shape(layer, node_ids)),
            "params": _count_params(layer),
            "trainable": bool(getattr(layer, "trainable", True)),
        }
        for layer in layers
    ]
    frame = pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params", "trainable"])
    return frame.astype({"params": "int64", "trainable": "bool"})


def _param_totals(model: Any) -> tuple[int, int]:
    total = _count_params(model)
    trainable = int(sum(int(np.prod(w.shape)) for w in getattr(model, "trainable_weights", [])))
    return total, trainable


def _table_figure(model: Any, dpi: int, title: str, max_rows: int = 40) -> Figure:
    frame = summary_frame(model)
    nested = {layer.name for layer in _nested_models(model)}
    rows = [
        [
            _truncate(r.layer, 32),
            _truncate(f"backbone ({r.type})" if r.layer in nested else r.type, 24),
            _truncate(r.output_shape, 28),
            f"{r.params:,}",
            "yes" if r.trainable else "no",
        ]
        for r in frame.itertuples(index=False)
    ]
    if len(rows) > max_rows:
        head, tail = max_rows // 2, max_rows - max_rows // 2 - 1
        skipped = len(rows) - head - tail
        rows = rows[:head] + [[f"... {skipped} more layers", "", "", "", ""]] + rows[-tail:]
    total, trainable = _param_totals(model)
    footer = (
        f"Total params: {total:,}   trainable: {trainable:,}   non-trainable: {total - trainable:,}"
    )
    row_h = 0.28
    fig = plt.figure(figsize=(10.0, row_h * (len(rows) + 1) + 0.9), dpi=dpi)
    ax = fig.add_axes((0.02, 0.35 / fig.get_figheight(), 0.96, 1 - 0.8 / fig.get_figheight()))
    ax.set_axis_off()
    table = ax.table(
        cellText=rows,
        colLabels=["Layer", "Type", "Output shape", "Params", "Trainable"],
        colWidths=[0.28, 0.22, 0.26, 0.14, 0.10],
        cellLoc="left",
        bbox=(0.0, 0.0, 1.0, 1.0),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, _col), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    fig.suptitle(_wrap(title, 10.0), fontsize=11, y=1 - 0.12 / fig.get_figheight(), va="top")
    fig.text(0.02, 0.1 / fig.get_figheight(), footer, fontsize=9, va="bottom")
    return fig


def _wrap(title: str, width_in: float, points: float = 11) -> str:
    """``title`` broken into lines that fit ``width_in`` inches at ``points`` pt."""
    return "\n".join(textwrap.wrap(title, max(20, int(width_in * 72 / (0.55 * points))))) \
        or title


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# Figures                                                                                        #


def _image_figure(
    image: Image.Image, dpi: int, title: str, max_w: float = 12.0, max_h: float = 8.0,
    legend: list[tuple[str, str]] | None = None,
) -> Figure:
    """Put a PIL image into a Figure (axis off) no larger than ``max_w`` x ``max_h`` inches.

    ``legend``: ``(label, colour)`` entries drawn by matplotlib below the image.
    """
    width, height = image.size
    scale = min(1.0, max_w / (width / dpi), max_h / (height / dpi))
    fig_w = max(width / dpi * scale, 6.0 if legend else 3.0)
    wrapped = _wrap(title, fig_w)
    title_h = 0.3 + 0.2 * wrapped.count("\n")
    ncol = 1 if legend and any(label.startswith("backbone") for label, _ in legend) else 3
    legend_h = 0.25 * -(-len(legend) // ncol) + 0.15 if legend else 0.0
    fig_h = height / dpi * scale + title_h + legend_h
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.0, legend_h / fig_h, 1.0, 1 - (title_h + legend_h) / fig_h))
    ax.imshow(np.asarray(image.convert("RGBA")), interpolation="antialiased")
    ax.set_axis_off()
    fig.suptitle(wrapped, fontsize=11, y=1 - 0.05 / fig_h, va="top")
    if legend:
        handles = [Patch(facecolor=colour, edgecolor="black", linewidth=0.5, label=label)
                   for label, colour in legend]
        fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def _layered_figure(
    model: Any, dpi: int, title: str, layered_kwargs: Mapping[str, Any] | None
) -> Figure:
    """visualkeras boxes; a nested backbone one box labelled with its name, parameters and
    output shape; the legend (one entry per layer type, the backbone by name) in matplotlib.
    """
    kwargs = {**_LAYERED_DEFAULTS, **(layered_kwargs or {})}
    want_legend = bool(kwargs.pop("legend", False))
    layers, node_ids = _layers_and_graph(model)
    colours = dict(kwargs.pop("color_map", None) or {})
    for layer in layers:
        if type(layer) not in colours:
            colours[type(layer)] = {"fill": _BOX_COLOURS[len(colours) % len(_BOX_COLOURS)],
                                    "outline": "black"}
    legend: list[tuple[str, str]] = []
    for layer in layers:  # one entry per type, one per backbone
        fill = colours[type(layer)].get("fill", "#cccccc")
        if _is_nested_model(layer):
            legend.append((_backbone_label(layer, node_ids), fill))
        elif type(layer).__name__ not in (label for label, _ in legend):
            legend.append((type(layer).__name__, fill))
    if _nested_models(model) and "text_callable" not in kwargs:
        def label(_index: int, layer: Any) -> tuple[str, bool]:
            if not _is_nested_model(layer):
                return "", True
            return _backbone_label(layer, node_ids, lines=True), True

        kwargs["text_callable"] = label
        kwargs.setdefault("font", ImageFont.load_default(size=_BLOCK_FONT_PX))
    image = layered_view(model, legend=False, color_map=colours, **kwargs)
    return _image_figure(image, dpi, title, legend=legend if want_legend else None)


def _graph_figure(model: Any, dpi: int, title: str) -> Figure:
    try:
        importlib.import_module("pydot")
    except ImportError as exc:
        raise ImportError(
            f"the graph view needs pydot (pip install pydot) and Graphviz; {_GRAPHVIZ_HINT}"
        ) from exc
    if shutil.which("dot") is None:
        raise RuntimeError(
            f"the graph view needs Graphviz, but `dot` is not on PATH; {_GRAPHVIZ_HINT}"
        )
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.png"
        # plot_model only prints a message (no exception) inside IPython when graphviz is broken.
        keras.utils.plot_model(
            model, to_file=str(out), show_shapes=True, show_layer_names=True, dpi=dpi
        )
        if not out.is_file():
            raise RuntimeError(f"keras.utils.plot_model wrote no image; {_GRAPHVIZ_HINT}")
        with Image.open(out) as im:
            image = im.convert("RGBA")
    return _image_figure(image, dpi, title, max_w=10.0, max_h=14.0)


def _save_png(fig: Figure, path: str | os.PathLike[str], dpi: int) -> None:
    """Save ``fig`` as PNG atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp_name, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def plot_architecture(
    model: Any,
    path: str | os.PathLike[str] | None = None,
    kind: str = "layered",
    *,
    dpi: int = 100,
    title: str | None = None,
    layered_kwargs: Mapping[str, Any] | None = None,
) -> Figure:
    """Draw the architecture of a Keras 3 model as a matplotlib Figure.

    The Figure is created with ``matplotlib.figure.Figure`` (not pyplot), so it is not
    registered with pyplot: Jupyter shows it when it is the last expression of a cell, and no
    figures pile up when called in a loop.

    Args:
        model: A built Keras 3 model (``Sequential`` or functional; nested models such as a
            ``keras.applications`` backbone are drawn as one block labelled ``backbone
            <name>``, with its parameter count and output shape).
        path: Optional file name; the figure is written there as PNG (via a temporary file in
            the same folder that is then renamed). Parent folders are created.
        kind: ``"layered"`` (visualkeras boxes with a legend), ``"graph"``
            (``keras.utils.plot_model``; needs pydot and the Graphviz ``dot`` binary),
            ``"table"`` (layer / type / output shape / params drawn with matplotlib only) or
            ``"auto"`` (tries layered, then graph, then table, and prints which view was used
            and why the earlier ones failed).
        dpi: Resolution of the figure and of the saved PNG.
        title: Figure title; defaults to the model name (with the backbone and the head's
            layers for a transfer model).
        layered_kwargs: Extra keyword arguments for :func:`layered_view` (override this
            function's defaults: legend, balanced sizing, modest box sizes).

    Returns:
        The Figure (the diagram image sits in an axes with the axis switched off).

    Raises:
        ValueError: If ``kind`` is not one of :data:`KINDS`.
        ImportError: ``kind="layered"`` without visualkeras, or ``kind="graph"`` without pydot.
        RuntimeError: ``kind="layered"`` when visualkeras fails, ``kind="graph"`` when the
            Graphviz ``dot`` binary is missing (install it with ``apt-get install graphviz``),
            or ``kind="auto"`` when every view failed.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    title = title if title is not None else _default_title(model)
    builders = {
        "layered": lambda: _layered_figure(model, dpi, title, layered_kwargs),
        "graph": lambda: _graph_figure(model, dpi, title),
        "table": lambda: _table_figure(model, dpi, title),
    }
    if kind == "auto":
        failures: list[str] = []
        fig = None
        for name, build in builders.items():
            try:
                fig = build()
            except Exception as exc:  # noqa: BLE001 - reported below, never silently
                failures.append(f"{name!r} failed ({type(exc).__name__}: {exc})")
                continue
            if failures:  # the first choice needs no notice; a fallback does
                print(f"plot_architecture(kind='auto'): using the {name!r} view "
                      f"[{'; '.join(failures)}]")
            break
        if fig is None:
            raise RuntimeError("plot_architecture: every view failed: " + "; ".join(failures))
    else:
        fig = builders[kind]()
    if path is not None:
        _save_png(fig, path, dpi)
    return fig
