"""Layer tables: what ``model.summary()`` prints, as a DataFrame a notebook can show.

One row per layer: its name, type, output shape, parameter count and whether it trains, so
a reader sees each custom CNN's layers with their shapes, and which parts of a transfer model
are frozen in each fine-tuning stage. A nested model (the backbone of a transfer model) is
one row, with its own counts of trainable and frozen layers, as Keras' summary shows it.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def _output_shape(layer: keras.layers.Layer) -> str:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return "?"
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


def layer_table(model: keras.Model) -> pd.DataFrame:
    """The layers of ``model`` with output shapes, parameters and what trains.

    Args:
        model: A built Keras model (functional or sequential).

    Returns:
        One row per top-level layer: ``layer``, ``type`` (a nested model reads
        ``"<Class> (n layers: t trainable, f frozen)"``), ``output shape`` (``batch`` for the
        batch axis), ``params``, ``trainable params`` and ``trains`` (``"yes"``, ``"no"`` or
        ``"partly"``), then a ``total`` row. BatchNormalization statistics are never
        trainable parameters.
    """
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        total, trainable = _count(layer.weights), _count(layer.trainable_weights)
        kind = type(layer).__name__
        if isinstance(layer, keras.Model):
            inner = [sub for sub in layer.layers if sub.weights]
            trains = sum(1 for sub in inner if sub.trainable_weights)
            kind = (f"{kind} ({len(inner)} layers with weights: {trains} trainable, "
                    f"{len(inner) - trains} frozen)")
        # What could train: BatchNormalization's moving statistics never do.
        potential = _count([w for w in layer.weights if w.trainable])
        state = ("-" if total == 0 else "no" if trainable == 0
                 else "yes" if trainable == potential else "partly")
        rows.append({"layer": layer.name, "type": kind, "output shape": _output_shape(layer),
                     "params": total, "trainable params": trainable, "trains": state})
    table = pd.DataFrame(rows)
    total_row = {"layer": "total", "type": "", "output shape": "",
                 "params": _count(model.weights), "trainable params":
                 _count(model.trainable_weights), "trains": ""}
    return pd.concat([table, pd.DataFrame([total_row])], ignore_index=True)
