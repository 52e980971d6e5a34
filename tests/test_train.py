import keras
import numpy as np
import pandas as pd
import yaml

from cnnlab.config import get_profile
from cnnlab.datasets import build_manifest
from cnnlab.models import build_transfer_model, find_backbone
from cnnlab.train import set_fine_tune_trainable, train_custom, train_transfer

TINY = get_profile("smoke", image_size=32, custom_image_size=32, max_train_per_class=6,
                   batch_size=8, custom_epochs=2, freeze_epochs=1, fine_tune_epochs=1)


def test_train_custom_writes_run_folder_and_models(sample_root, project):
    manifest = build_manifest(sample_root, "sample")
    result = train_custom("retail_cnn", manifest, TINY, project)
    run = result.run.path
    assert run == project.checkpoints / "sample-retail_cnn"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["keras"] == keras.__version__
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(history.columns)
    assert (run / "best.weights.h5").is_file() and (run / "last.weights.h5").is_file()
    for suffix in (".keras", ".h5", ".json"):
        assert (project.models / f"sample-retail_cnn{suffix}").is_file()
    # A second run starts a new folder and keeps the old one, whole, beside it.
    train_custom("retail_cnn", manifest, TINY, project)
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]
    kept = list(project.checkpoints.glob("sample-retail_cnn.*"))
    assert len(kept) == 1 and (kept[0] / "best.weights.h5").is_file()


def test_fine_tune_keeps_bn_statistics_and_early_layers(sample_root, project, shared_dir):
    manifest = build_manifest(sample_root, "sample")
    result = train_transfer("mobilenet_v3_small_075", manifest, TINY, "local",
                            shared_dir / "weights", project)
    assert result.weights.startswith("imagenet (local file")
    assert result.history["epoch"].tolist() == [0, 1]
    assert "imagenet (local file" in yaml.safe_load(result.run.args.read_text())["weights"]


def test_set_fine_tune_trainable_freezes_bn_and_lower_layers(shared_dir):
    weights = shared_dir / "weights" / "mobilenet_v3_small_075_imagenet_notop.weights.h5"
    model = build_transfer_model("mobilenet_v3_small_075", 3, 32, str(weights))
    backbone = find_backbone(model)
    set_fine_tune_trainable(model)
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert not backbone.layers[10].trainable and backbone.layers[-3].trainable
    moving = [np.asarray(w).copy() for layer in bn for w in layer.non_trainable_weights]
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(np.random.uniform(0, 255, (8, 32, 32, 3)), np.arange(8) % 3, epochs=1, verbose=0)
    after = [np.asarray(w) for layer in bn for w in layer.non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(moving, after))


def test_random_init_backbone_is_trained_from_scratch(sample_root, project):
    manifest = build_manifest(sample_root, "sample")
    result = train_transfer("mobilenet_v3_small", manifest, TINY, "none", None, project)
    assert result.stage_boundary is None and result.weights == "none (random init)"
    assert len(result.history) == TINY.freeze_epochs + TINY.fine_tune_epochs
    assert find_backbone(result.model).trainable
