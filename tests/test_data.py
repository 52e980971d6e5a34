import os

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from cnnlab.data.pipeline import augmentation_layers, cache_key, load_image, make_dataset


def test_pipeline_decodes_every_mode_to_rgb_uint8(tmp_path):
    files = [write_image(tmp_path / f"x.{ext}", mode, fmt=fmt) for ext, mode, fmt in
             [("jpg", "RGB", None), ("jpg", "L", None), ("png", "P", None),
              ("png", "RGBA", None), ("bmp", "RGB", None), ("gif", "P", None)]]
    ds = make_dataset(files, [0, 1, 2, 3, 4, 5], 24, batch_size=4)
    batches = list(ds)
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
    assert [b[0].shape[0] for b in batches] == [4, 2]
    assert np.concatenate([b[1].numpy() for b in batches]).tolist() == [0, 1, 2, 3, 4, 5]


def test_pipeline_argument_errors():
    with pytest.raises(ValueError, match="no image files"):
        make_dataset([], [], 8)
    with pytest.raises(ValueError, match="2 files but 1 labels"):
        make_dataset(["a", "b"], [0], 8)


def test_augmentation_changes_images_but_not_shape():
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    out = augmentation_layers(hflip=True, seed=1)(x, training=True).numpy()
    assert out.shape == x.shape and not np.allclose(out, x)
    assert "random_flip" not in [layer.name for layer in augmentation_layers(hflip=False).layers]


def test_load_image_honours_exif_and_modes(tmp_path):
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)
    Image.new("CMYK", (10, 10)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    for name in ("cmyk.jpg", "deep.png"):
        image = load_image(tmp_path / name, image_size=16)
        assert image.shape == (16, 16, 3) and image.dtype == np.float32
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(ValueError, match="bad.jpg is not a readable image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


def test_jpeg_dct_scaling_decodes_smaller_but_close(tmp_path):
    import tensorflow as tf

    from cnnlab.data.pipeline import decode_resize

    yy, xx = np.mgrid[0:224, 0:224]
    smooth = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    path = tmp_path / "smooth.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    exact = decode_resize(tf.constant(str(path)), 128, dct_scaling=1.0).numpy()
    fast = decode_resize(tf.constant(str(path)), 128, dct_scaling=0.85).numpy()
    full = decode_resize(tf.constant(str(path)), 128, dct_scaling=None).numpy()
    assert exact.shape == fast.shape == (128, 128, 3) and fast.dtype == np.uint8
    np.testing.assert_array_equal(exact, full)  # 1.0 never decodes below the output size
    assert not np.array_equal(exact, fast)  # 0.85 decoded at 1/2 scale (112 px), upsampled
    assert np.abs(exact.astype(int) - fast.astype(int)).mean() < 3
    same = decode_resize(tf.constant(str(path)), 224).numpy()
    accurate = tf.io.decode_jpeg(path.read_bytes(), dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(same, accurate)  # at the output size: decoded, not resized


def test_disk_cache_is_keyed_by_files_and_size(tmp_path):
    files = [write_image(tmp_path / f"{i}.png") for i in range(3)]
    cache_dir = tmp_path / "cache"
    first = np.concatenate([x for x, _ in make_dataset(files, [0, 1, 2], 16, cache="disk",
                                                       cache_dir=cache_dir)])
    written = sorted(p.name for p in cache_dir.iterdir())
    assert written and all(name.startswith("16px-") for name in written)
    stats = [path.stat() for path in files]
    for path, stat in zip(files, stats):  # the cached epoch no longer reads the files: their
        path.write_bytes(b"\0" * stat.st_size)  # bytes zeroed, size and mtime kept, it still
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # gives the cached pixels
    again = np.concatenate([x for x, _ in make_dataset(files, [0, 1, 2], 16, cache="disk",
                                                       cache_dir=cache_dir)])
    np.testing.assert_array_equal(first, again)
    # A file rewritten under the same name (another mtime) is another cache.
    assert any(name.startswith(cache_key(files, 16)) for name in written)
    os.utime(files[0], ns=(stats[0].st_atime_ns, stats[0].st_mtime_ns + 10**9))
    assert not any(name.startswith(cache_key(files, 16)) for name in written)
    with pytest.raises(ValueError, match="cache_dir"):
        make_dataset(files, [0, 1, 2], 16, cache="disk")


@pytest.mark.parametrize("size,dct", [(224, 1.0), (128, 1.0), (128, 0.85), (64, 1.0)])
def test_static_jpeg_decoder_matches_the_per_file_one(tmp_path, size, dct):
    import tensorflow as tf

    from cnnlab.data.pipeline import decode_resize, make_decoder

    files = [write_image(tmp_path / f"{i}.jpg", size=(224, 224)) for i in range(2)]
    fixed = make_decoder(size, dct, ["JPEG", "JPEG"], [(224, 224)] * 2)
    mixed = make_decoder(size, dct, ["JPEG", "PNG"], [(224, 224)] * 2)
    for path in files:
        expected = decode_resize(tf.constant(str(path)), size, dct).numpy()
        np.testing.assert_array_equal(fixed(tf.constant(str(path))).numpy(), expected)
        np.testing.assert_array_equal(mixed(tf.constant(str(path))).numpy(), expected)
