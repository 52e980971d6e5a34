"""Google Colab support: Kaggle credentials, Google Drive folders, and the accelerator found.

The first cell of every notebook clones and installs cnnlab on Colab, then calls
:func:`setup`. Outside Colab nothing here runs unless called.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")
DRIVE_FOLDER = DRIVE_MOUNT / "MyDrive" / "cnnlab"
KEPT_FOLDERS = ("data", "models", "checkpoints")


def is_colab() -> bool:
    """True inside a Google Colab runtime (its ``google.colab`` module is loaded)."""
    return "google.colab" in sys.modules


def kaggle_credentials(uploaded: str | os.PathLike = "/content/kaggle.json") -> str:
    """Makes Kaggle credentials available to ``kagglehub``, from Colab secrets or a file.

    Order: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` already in the environment; the Colab secrets of
    those names (the key icon in Colab's side bar); an uploaded ``kaggle.json`` (copied to
    ``~/.kaggle/kaggle.json`` with mode 600). Public datasets download without credentials.

    Args:
        uploaded: Where an uploaded ``kaggle.json`` lands in Colab's file panel.

    Returns:
        Where the credentials came from, or ``"none"``.
    """
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment"
    try:
        from google.colab import userdata

        username, key = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
    except Exception:  # not on Colab, secret missing, or notebook access not granted
        username = key = None
    if username and key:
        os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = username, key
        return "colab secrets"
    uploaded = Path(uploaded)
    if uploaded.is_file():
        json.loads(uploaded.read_text())  # a clear JSON error beats a failed download later
        target = Path.home() / ".kaggle" / "kaggle.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(uploaded, target)
        target.chmod(0o600)
        return "uploaded kaggle.json"
    return "none"


def keep_on_drive(root: str | os.PathLike, drive_folder: str | os.PathLike = DRIVE_FOLDER
                  ) -> list[Path]:
    """Links ``data/``, ``models/`` and ``checkpoints/`` to folders on a mounted Google Drive.

    Colab's disk is wiped at every reset; Drive is not. Existing local content is moved to
    Drive first, so nothing already made is lost.

    Args:
        root: The cnnlab checkout.
        drive_folder: Folder on the mounted Drive.

    Returns:
        The linked folders.

    Raises:
        FileNotFoundError: If Drive is not mounted (``drive.mount('/content/drive')``).
    """
    drive_folder = Path(drive_folder)
    if not drive_folder.parent.is_dir():
        raise FileNotFoundError(f"{drive_folder.parent} not found: mount Google Drive first")
    linked = []
    for name in KEPT_FOLDERS:
        local, remote = Path(root) / name, drive_folder / name
        remote.mkdir(parents=True, exist_ok=True)
        if local.is_symlink():
            linked.append(local)
            continue
        if local.is_dir():
            for item in local.iterdir():
                if not (remote / item.name).exists():
                    shutil.move(str(item), remote / item.name)
            shutil.rmtree(local)
        local.symlink_to(remote, target_is_directory=True)
        linked.append(local)
    return linked


def setup(root: str | os.PathLike, use_drive: bool = False) -> dict:
    """What the first notebook cell does on Colab after installing cnnlab.

    Args:
        root: The cnnlab checkout (``/content/cnnlab``).
        use_drive: Mount Google Drive and keep data, models and checkpoints there.

    Returns:
        ``{"kaggle": source of credentials, "drive": linked folders or []}``, also printed.
    """
    linked: list[Path] = []
    if use_drive:
        from google.colab import drive

        drive.mount(str(DRIVE_MOUNT))
        linked = keep_on_drive(root)
    state = {"kaggle": kaggle_credentials(), "drive": [p.name for p in linked]}
    print(f"Kaggle credentials: {state['kaggle']}; on Google Drive: "
          f"{', '.join(state['drive']) or 'nothing (use_drive=False)'}")
    return state


def accelerator_report() -> dict:
    """The accelerator TensorFlow sees and the distribution strategy it implies.

    Returns:
        ``{"accelerator": "TPU" | "GPU" | "CPU", "devices": [names], "memory_gib": float or
        None, "strategy": name}``: TPUStrategy on a TPU, MirroredStrategy on several GPUs,
        the default strategy otherwise.
    """
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tpu = resolver.cluster_spec().as_dict() != {}
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        tpu = False
    if tpu:
        return {"accelerator": "TPU", "devices": ["TPU"], "memory_gib": None,
                "strategy": "TPUStrategy"}
    gpus = tf.config.list_physical_devices("GPU")
    names, memory = [], None
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    if gpus:
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, check=True).stdout.split()
            memory = round(float(out[0]) / 1024, 1)
        except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
            memory = None
    strategy = ("MirroredStrategy" if len(gpus) > 1 else "default (one GPU)" if gpus
                else "default (CPU)")
    return {"accelerator": "GPU" if gpus else "CPU", "devices": names or ["CPU"],
            "memory_gib": memory, "strategy": strategy}
