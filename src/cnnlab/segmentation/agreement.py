"""Classification agreement: does a classifier's label match the largest segment?

On real photos without ground-truth masks, the dominant DeepLab (PASCAL VOC) class of each
image is compared with the class its folder names, through ``VOC_CLASS_MAPS`` (for example,
the vehicles dataset's ``car``/``bus``/``truck``/``motorcycle`` to VOC's ``car``, ``bus``,
``motorbike``), with Wilson intervals on the agreement rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from cnnlab.data.images import read_image as read_image  # the one decode, re-exported here
from cnnlab.segmentation.deeplab import Segmenter, dominant_class
from cnnlab.segmentation.overlays import plot_segmentation

# Dataset class -> the PASCAL VOC classes that depict it. VOC's annotation guidelines
# (http://host.robots.ox.ac.uk/pascal/VOC/voc2007/guidelines.html) put cars, vans and people
# carriers under "car" and have no truck/lorry class, so the vehicle set's truck and
# juggernaut (articulated lorry) classes have no VOC counterpart and are left out. Folder
# names of Zenodo 6634554 and the names cnnlab's vehicles selection renames them to
# (bike -> motorcycle, minibus -> bus) are both listed. The retail-products course dataset's
# drinks are VOC bottles.
VOC_CLASS_MAPS: dict[str, dict[str, tuple[str, ...]]] = {
    "vehicles": {
        "bike": ("motorbike", "bicycle"),
        "motorcycle": ("motorbike", "bicycle"),
        "car": ("car",),
        "minibus": ("bus", "car"),
        "bus": ("bus", "car"),
        "pickup": ("car",),
    },
    "retail": {"drinks": ("bottle",)},
}

def agreement_table(
    segmenter: Segmenter,
    rows: pd.DataFrame,
    class_map: Mapping[str, Sequence[str]],
) -> pd.DataFrame:
    """Segments each image and checks its largest foreground segment against its label.

    Args:
        segmenter: Any :class:`Segmenter` with VOC-named classes.
        rows: Images with ``label`` (dataset class) and ``file`` columns; labels absent from
            ``class_map`` are skipped.
        class_map: Dataset class -> accepted segmenter classes (see ``VOC_CLASS_MAPS``).

    Returns:
        One row per image: ``label``, ``file``, ``largest segment`` (``"background"`` when
        nothing else was found), ``foreground share`` (fraction of pixels not background),
        ``expected`` (accepted classes joined by ``/``) and ``agrees`` (bool).

    Raises:
        ValueError: If ``class_map`` names a class the segmenter does not know, or no row has
            a mapped label.
    """
    names = list(segmenter.class_names)
    unknown = sorted({c for accepted in class_map.values() for c in accepted} - set(names))
    if unknown:
        raise ValueError(f"class_map names {unknown}, which {segmenter.name} does not predict "
                         f"(its classes: {', '.join(names)})")
    mapped = rows[rows["label"].isin(list(class_map))]
    if mapped.empty:
        raise ValueError(f"no image has a label in the class map ({sorted(class_map)}); "
                         f"labels found: {sorted(rows['label'].unique())[:10]}")
    records = []
    for label, file in zip(mapped["label"], mapped["file"]):
        mask = segmenter.predict_mask(read_image(file))
        largest = names[dominant_class(mask)]
        records.append({
            "label": label, "file": str(file), "largest segment": largest,
            "foreground share": float((mask != 0).mean()),
            "expected": "/".join(class_map[label]),
            "agrees": largest in class_map[label],
        })
    return pd.DataFrame(records)


def agreement_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per class: images, how many agree, the share with a Wilson interval, what was found.

    Args:
        table: From :func:`agreement_table`.
        confidence: Level of the Wilson score interval of the share (see
            ``cnnlab.evaluation.leaderboard.wilson_interval``).

    Returns:
        One row per class plus ``all``: ``expected``, ``images``, ``agree``, ``share``,
        ``CI low``, ``CI high``, ``largest segments`` (the three most frequent, with counts).
    """
    from scipy.stats import binomtest

    def summarise(label: str, part: pd.DataFrame) -> dict:
        agree, n = int(part["agrees"].sum()), len(part)
        ci = binomtest(agree, n).proportion_ci(confidence, method="wilson")
        found = part["largest segment"].value_counts().head(3)
        expected = part["expected"].unique()
        return {"class": label,
                "expected": expected[0] if len(expected) == 1 else "its mapped classes",
                "images": n, "agree": agree, "share": agree / n,
                "CI low": float(ci.low), "CI high": float(ci.high),
                "largest segments": ", ".join(f"{k} {v}" for k, v in found.items())}

    out = [summarise(label, part) for label, part in table.groupby("label", sort=True)]
    out.append(summarise("all", table))
    return pd.DataFrame(out).set_index("class")


def plot_agreement_failures(segmenter: Segmenter, table: pd.DataFrame, k: int = 6,
                            seed: int = 0) -> Figure:
    """Input, mask and overlay of ``k`` images whose largest segment disagrees with the label.

    Args:
        segmenter: The segmenter that made ``table``.
        table: From :func:`agreement_table`.
        k: Failures shown, spread over the classes (round robin).
        seed: Sampling seed.

    Raises:
        ValueError: If no image disagrees.
    """
    failures = table[~table["agrees"]]
    if failures.empty:
        raise ValueError("every image agrees with its label; there is no failure to show")
    shuffled = failures.sample(frac=1, random_state=seed)
    order = shuffled.groupby("label").cumcount()
    picks = shuffled.assign(_round=order.to_numpy()).sort_values(["_round", "label"]).head(k)
    images = [read_image(f) for f in picks["file"]]
    masks = segmenter.predict_masks(images)
    titles = [f"{row['label']} → {row['largest segment']}" for _, row in picks.iterrows()]
    return plot_segmentation(images, masks, titles, class_names=segmenter.class_names,
                             backend=segmenter.description,
                             title=f"{segmenter.description}: largest segment disagrees "
                                   f"with the label ({len(picks)} of {len(failures)})")
