"""Project folders and run profiles.

The notebooks pass data and models through four folders at the top of the repository:
``data/`` (datasets, manifests, caches), ``models/`` (final models), ``checkpoints/`` (one run
folder per training run) and ``reports/`` (executed notebooks, figures, tables). Profiles bundle
the settings that depend on the hardware: ``smoke`` (seconds, for tests), ``cpu`` (a laptop or
this project's 2-core CI machine) and ``gpu`` (Colab).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT_ENV = "CNNLAB_ROOT"


@dataclass(frozen=True)
class ProjectDirs:
    """The four shared folders of a cnnlab checkout.

    Attributes:
        root: The repository root (the folder holding ``notebooks/``).
    """

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def create(self) -> ProjectDirs:
        """Creates the four folders if missing and returns ``self``."""
        for folder in (self.data, self.models, self.checkpoints, self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def find_root(start: str | os.PathLike | None = None) -> Path:
    """Finds the project root: ``$CNNLAB_ROOT``, else the nearest parent with ``notebooks/``.

    Notebooks run with ``notebooks/`` as working directory, the CLI from the root; both resolve
    to the same folders this way.

    Args:
        start: Folder to search upwards from (default: the current directory).

    Returns:
        The root folder. Falls back to ``start`` itself when no parent has ``notebooks/`` and
        ``pyproject.toml``, so a bare folder outside a checkout still works.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def project_dirs(root: str | os.PathLike | None = None) -> ProjectDirs:
    """Returns the project's folders (created if missing) under ``root`` or :func:`find_root`."""
    return ProjectDirs(Path(root).resolve() if root else find_root()).create()


@dataclass(frozen=True)
class Profile:
    """Settings that depend on the hardware a run has.

    Attributes:
        name: Registry key.
        image_size: Side in pixels of the square input of the transfer models.
        custom_image_size: Side in pixels for the custom CNNs (their first 9x9 convolution
            costs ~1 GFLOP per image at 224 px, too slow for a CPU).
        batch_size: Images per batch.
        custom_epochs: Epochs for each custom CNN.
        freeze_epochs: Stage 1 epochs of transfer learning (frozen backbone, head only).
        fine_tune_epochs: Stage 2 epochs (top of the backbone unfrozen, lower rate).
        scratch_epochs: Epochs for a backbone without pretrained weights, trained end to end
            (None: ``freeze_epochs + fine_tune_epochs``).
        learning_rate: Adam learning rate for custom CNNs and the head.
        fine_tune_recipe: How stage 2 trains the backbone: a key of ``recipes.RECIPES``
            (``"default"``: every layer but BatchNorm, discriminative rates, warm-up + cosine,
            AdamW, label smoothing; ``"top"``: the top blocks at one lower rate).
        custom_models: Custom CNNs trained in notebook 02 (keys of ``models.CUSTOM_MODELS``).
        backbones: Backbones fine-tuned in notebook 03 (keys of ``backbones.BACKBONES``).
        max_train_per_class: Cap on training images per class (None: all), for quick runs.
        segment_images: Images segmented in notebook 04.
        agreement_images: Images of notebook 04's classification-agreement check (None: every
            image; 1,200 vehicle photos take about 20 s with the float DeepLab model and 60 s
            with the uint8 one on 2 CPU cores).
        segment_image_size: Square input side of notebook 04's DeepLabV3+ (a multiple of 16).
        segment_epochs: DeepLabV3+ training epochs.
        segment_batch_size: Image/mask pairs per DeepLabV3+ batch.
        segment_filters: Channels of the ASPP and decoder convolutions (256 in the paper).
        segment_learning_rate: Adam learning rate of DeepLabV3+.
        segment_max_pairs: Cap on the image/mask pairs DeepLabV3+ uses (None: all).
        segment_pretrained: Start DeepLabV3+'s backbone from the run's ``weights``; False (the
            smoke profile, which checks the mechanics in seconds): random initialisation.
        mixed_precision: Keras dtype policy for training: ``"mixed_float16"`` (GPUs with
            tensor cores: float16 compute, float32 variables, loss scaling), ``"mixed_bfloat16"``
            (TPUs, and CPUs with AVX512-BF16/AMX) or None for float32. Outputs stay float32
            softmax either way (https://keras.io/api/mixed_precision/).
        jit_compile: Compile the train step with XLA (``True``, ``False`` or ``"auto"``, which
            Keras turns off on CPU-only machines). Off on CPU, where it does not pay off.
        strategy: ``tf.distribute`` strategy, a key of ``distribute.STRATEGIES``
            (``auto``: TPU if present, several GPUs mirrored, else one device).
        cache_features: Train the head of a frozen pretrained backbone on cached backbone
            features (``data/<dataset>/features/``) instead of live images. The cached
            features come from un-augmented images, so stage 1 then runs without augmentation.
        deterministic: Make every op deterministic (``enable_op_determinism``): same seed, same
            metrics on CPU, at some cost in speed.
        scratch_twins: Backbones of ``backbones`` also trained from random initialisation,
            end to end, as ``<backbone>_scratch``: the no-transfer baseline of the same
            architecture.
        backbone_overrides: ``{model name: {field: value}}`` applied to this profile for one
            backbone or twin of notebook 03 (e.g. a smaller image size and fewer epochs for
            a short run of a big backbone on a CPU); see :meth:`for_backbone`.
        left_out: ``{backbone: reason}``: families this profile does not train in notebook 03,
            each with the reason it is left out (printed by ``training.train_backbones``), so
            that no model is shown at chance in its results.
        mixed_models: Models of notebook 07 (keys of ``tabular.models.MIXED_MODELS``).
        mixed_backbone: Frozen ImageNet backbone of notebook 07's transfer and fusion models.
        mixed_image_size: Photo side in pixels for that backbone.
        mixed_cnn_image_size: Photo side in pixels for notebook 07's CNN from scratch.
        mixed_epochs: Maximum epochs of notebook 07's models on tabular columns and cached
            photo features (early stopping on validation loss ends most runs sooner).
        mixed_cnn_epochs: Maximum epochs of notebook 07's CNN from scratch.
        mixed_learning_rate: Adam rate of notebook 07's models.
        mixed_batch_size: Rows (houses) per step in notebook 07.
        mixed_patience: Epochs without a better validation loss before early stopping.
    """

    name: str
    image_size: int
    custom_image_size: int
    batch_size: int
    custom_epochs: int
    freeze_epochs: int
    fine_tune_epochs: int
    scratch_epochs: int | None = None
    learning_rate: float = 1e-3
    fine_tune_recipe: str = "default"
    custom_models: tuple[str, ...] = ("retail_cnn",)
    backbones: tuple[str, ...] = ("mobilenet_v3_small_075",)
    max_train_per_class: int | None = None
    segment_images: int = 6
    agreement_images: int | None = None
    segment_image_size: int = 128
    segment_epochs: int = 12
    segment_batch_size: int = 16
    segment_filters: int = 64
    segment_learning_rate: float = 1e-3
    segment_max_pairs: int | None = None
    segment_pretrained: bool = True
    mixed_precision: str | None = None
    jit_compile: bool | str = False
    strategy: str = "auto"
    cache_features: bool = True
    deterministic: bool = False
    scratch_twins: tuple[str, ...] = ()
    backbone_overrides: dict = field(default_factory=dict)
    left_out: dict = field(default_factory=dict)
    mixed_models: tuple[str, ...] = ("mlp", "cnn", "transfer", "fusion", "frozen_fusion")
    mixed_backbone: str = "mobilenet_v2"
    mixed_image_size: int = 224
    mixed_cnn_image_size: int = 32
    mixed_epochs: int = 400
    mixed_cnn_epochs: int = 40
    mixed_learning_rate: float = 1e-3
    mixed_batch_size: int = 32
    mixed_patience: int = 40
    extras: dict = field(default_factory=dict)

    def replace(self, **changes) -> Profile:
        """Returns a copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def for_backbone(self, name: str) -> Profile:
        """This profile with ``backbone_overrides[name]`` applied (itself if none)."""
        return self.replace(**self.backbone_overrides.get(name, {}))

    def is_short_run(self, name: str) -> bool:
        """Whether ``name`` runs with reduced settings (it has ``backbone_overrides``)."""
        return bool(self.backbone_overrides.get(name))


# The families without an ImageNet file offline, left out of the cpu profile's cards run.
_NOT_ON_CPU = ("no ImageNet weights file in the local weights folder (it holds the two "
               "MobileNets), and from random initialisation 60 images per class of 53 classes "
               "do not train it meaningfully within this profile's CPU budget; the gpu profile "
               "fine-tunes it from Keras' ImageNet weights")
_TRAINED_ELSEWHERE = {
    "inception_v3": "; from scratch it trains on the weather stand-in at 75 px "
                    "(docs/benchmarks/scratch_recipes.md)",
    "vgg16": "; from scratch it trains in the vehicles course-project run "
             "(docs/course_projects.md) and on the weather stand-in "
             "(docs/benchmarks/scratch_recipes.md)",
    "efficientnet_b0": "; from scratch it trains in the weather course-project run "
                       "(docs/course_projects.md)",
    "densenet121": "; from scratch it trains in the weather course-project run "
                   "(docs/course_projects.md)",
}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", image_size=32, custom_image_size=32, batch_size=32, custom_epochs=1,
        freeze_epochs=1, fine_tune_epochs=1, max_train_per_class=12, segment_images=2,
        agreement_images=24, segment_image_size=64, segment_epochs=2, segment_batch_size=8,
        segment_filters=32, segment_max_pairs=48, segment_pretrained=False,
        backbones=("mobilenet_v3_small_075", "efficientnet_b0"),
        scratch_twins=("mobilenet_v3_small_075",),
        mixed_image_size=96, mixed_cnn_image_size=24, mixed_epochs=30, mixed_cnn_epochs=3,
        mixed_patience=30,
    ),
    # quick: `make run` on the generated sample in under 5 minutes on 2 cores, every stage
    # above chance: both custom CNNs at 32 px (objects fill the small receptive fields; the
    # BatchNorm CNN needs about 20 epochs before its inference-mode statistics settle), the two
    # backbones with ImageNet files at 96 px, a small DeepLabV3+ on 200 mask pairs.
    "quick": Profile(
        name="quick", image_size=96, custom_image_size=32, batch_size=32, custom_epochs=22,
        freeze_epochs=6, fine_tune_epochs=2,
        custom_models=("retail_cnn", "vehicles_cnn_bn"),
        backbones=("mobilenet_v3_small_075", "mobilenet_v2"),
        segment_images=4, agreement_images=24, segment_image_size=64, segment_epochs=6,
        segment_batch_size=16, segment_filters=32, segment_max_pairs=200,
        mixed_image_size=96, mixed_cnn_image_size=24, mixed_epochs=80, mixed_cnn_epochs=5,
        mixed_patience=10,
    ),
    # cpu: about an hour for cards (3,180 training images) on 2 cores. The two backbones with
    # ImageNet files offline (MobileNetV3Small 0.75, MobileNetV2) are fine-tuned with the
    # default recipe, stage 1 on cached features (a fraction of a second per epoch, so 20
    # epochs); MobileNetV2 at 160 px, where it trains twice as fast as at 224. The 0.75 one's
    # from-scratch twin is the no-transfer baseline, with its images, size and epochs
    # (training.twin_settings; MobileNetV2's fair twin, 26 epochs end to end at 160 px, is in
    # the gpu profile). The other families are left out, each with its reason (_NOT_ON_CPU).
    "cpu": Profile(
        name="cpu", image_size=224, custom_image_size=64, batch_size=32, custom_epochs=8,
        freeze_epochs=20, fine_tune_epochs=12, scratch_epochs=12,
        custom_models=("retail_cnn", "vehicles_cnn_bn"),
        backbones=("mobilenet_v3_small_075", "mobilenet_v2"),
        scratch_twins=("mobilenet_v3_small_075",),
        backbone_overrides={"mobilenet_v2": {"image_size": 160, "fine_tune_epochs": 6}},
        left_out={name: _NOT_ON_CPU + where for name, where in _TRAINED_ELSEWHERE.items()},
    ),
    "gpu": Profile(
        name="gpu", image_size=224, custom_image_size=128, batch_size=64, custom_epochs=20,
        freeze_epochs=8, fine_tune_epochs=10,
        custom_models=("retail_cnn", "vehicles_cnn_bn"),
        backbones=("inception_v3", "vgg16", "mobilenet_v2", "mobilenet_v3_small",
                   "mobilenet_v3_small_075", "mobilenet_v3_large", "efficientnet_b0",
                   "densenet121"),
        scratch_twins=("mobilenet_v2",),
        segment_image_size=256, segment_epochs=30, segment_filters=256,
        mixed_precision="mixed_float16", jit_compile=True,
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """Returns the profile ``name`` with ``overrides`` applied (``None`` values ignored).

    Raises:
        KeyError: If ``name`` is not a known profile; the message lists the known ones.
    """
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name].replace(**overrides)


def parse_overrides(pairs: list[str] | None, base: Profile | None = None) -> dict:
    """Parses ``KEY=VALUE`` profile overrides from the command line into typed values.

    Values take the type of the field: ``int``, ``float``, ``bool`` (``true``/``false``/``1``/
    ``0``), comma-separated tuples, and ``none`` for None where the field allows it.

    Args:
        pairs: Strings such as ``["batch_size=8", "mixed_precision=mixed_bfloat16"]``.
        base: Profile whose current values give the types (default: ``smoke``).

    Returns:
        ``{field: value}`` for :meth:`Profile.replace`.

    Raises:
        ValueError: If a pair has no ``=``, names no field of :class:`Profile`, or has a value
            of the wrong type; the message names the pair and the known fields.
    """
    base = base or PROFILES["smoke"]
    fields = {f.name: f for f in dataclasses.fields(Profile)
              if f.name not in ("name", "extras", "backbone_overrides")}
    parsed = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"bad profile override {pair!r}: use KEY=VALUE with KEY one of "
                             f"{', '.join(fields)}")
        current, annotation = getattr(base, key), str(fields[key].type)
        text = text.strip()
        try:
            if text.lower() == "none" and "None" in annotation:
                value = None
            elif isinstance(current, tuple):
                value = tuple(part.strip() for part in text.split(",") if part.strip())
            elif "str" in annotation and text.lower() not in ("true", "false"):
                value = text
            elif isinstance(current, bool) or annotation.startswith("bool"):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                value = text.lower() in ("true", "1")
            elif isinstance(current, float):
                value = float(text)
            elif isinstance(current, int) or annotation.startswith("int"):
                value = int(text)
            else:
                value = text
        except ValueError as error:
            raise ValueError(f"bad value in profile override {pair!r}: {error}") from None
        parsed[key] = value
    return parsed


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """A path as shown to people: relative to the project root, or with ``~`` for home.

    Notebooks are committed with their outputs, so they must not show a machine's absolute
    paths; every path a notebook prints goes through this function.
    """
    base = Path(root).resolve() if root else find_root()
    # Links are kept as they are (``data/links/cards``, made by ``cnnlab run`` for folders
    # outside the checkout), then resolved.
    given = Path(path).expanduser()
    for candidate in (Path(os.path.abspath(given)), given.resolve()):
        for anchor, label in ((base, "."), (base.parent, ".."), (Path.home(), "~")):
            try:
                relative = candidate.relative_to(anchor)
            except ValueError:
                continue
            return f"{label}/{relative.as_posix()}" if str(relative) != "." else label
    return given.name


def resolve_profile(
    profile: str,
    image_size: int | None = None,
    backbones: list[str] | None = None,
    custom_models: list[str] | None = None,
) -> Profile:
    """The profile a notebook runs with: ``profile`` plus the run's overrides.

    Args:
        profile: Profile name.
        image_size: Overrides both image sizes (transfer and custom models).
        backbones: Overrides the backbones of notebook 03, including any the profile leaves
            out (``Profile.left_out`` is then empty: the list is the whole choice).
        custom_models: Overrides the custom CNNs of notebook 02.
    """
    resolved = get_profile(
        profile, image_size=image_size, custom_image_size=image_size,
        backbones=tuple(backbones) if backbones else None,
        custom_models=tuple(custom_models) if custom_models else None,
    )
    # A list given by name is the whole choice: nothing is left out of it behind its back.
    return resolved.replace(left_out={}) if backbones else resolved
