"""Example: benchmark the ID2 hasher against PDQ and pHash with Thorn perception's own benchmarking.

Needs ``perception[benchmarking]`` importable (see docs/install.md: albumentations is installed without its
opencv-python-headless requirement; the project's single OpenCV is opencv-contrib-python-headless).

Usage: ``python examples/perception_benchmark.py [--photos 16] [--input-size 256]``
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np
from _common import shared_photos
from PIL import Image, ImageFilter

from id2_plugin.testing import reupload_pixels


def blur3(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))


def crop_10(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 10 : h - h // 10, w // 10 : w - w // 10])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=256)
    args = ap.parse_args()

    from perception.benchmarking import BenchmarkImageDataset
    from perception.hashers import PDQHash, PHash

    from id2_plugin.adapters.perception import ID2Hasher
    from id2_plugin.config import EmbedderConfig

    photos = shared_photos(args.photos)
    dataset = BenchmarkImageDataset.from_tuples([(str(p), "photos") for p in photos])
    hashers = {"id2": ID2Hasher(EmbedderConfig(input_size=args.input_size)), "pdq": PDQHash(), "phash": PHash()}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transforms = dataset.transform(
            {"noop": lambda image: image, "jpeg50_colour": reupload_pixels, "blur3": blur3, "crop_10": crop_10},
            storage_dir=tmp,
        )
        hashes = transforms.compute_hashes(hashers, max_workers=2)
        table = hashes.compute_threshold_recall(precision_threshold=99.9)
    print(table.to_string())


if __name__ == "__main__":
    main()
