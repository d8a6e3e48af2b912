"""Look-alike datasets in the official layouts, synthesised at test time (small pictures, the real file names and
image modes): Cityscapes (leftImg8bit RGB PNG, gtFine labelIds / labelTrainIds mode L), ADE20K challenge
(RGB JPEG, mode-L annotations 0..150), ADE-Indoor archive (<scene>/ADE_*.jpg + .png, values 0..94)."""
import os

import numpy as np
from PIL import Image

CITIES = ("aachen", "bochum")


def smooth_image(h, w, seed):
    """A smooth RGB picture (resampling differences stay small on it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.random.default_rng(seed)
    a, b, c = r.uniform(0.02, 0.08, 3)
    img = np.stack([128 + 100 * np.sin(a * x + b * y + k) for k in range(3)], -1)
    img += 20 * np.cos(c * (x - y))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def label_blocks(h, w, values, seed):
    """A label map of rectangular blocks drawing from ``values``."""
    r = np.random.default_rng(seed)
    lab = np.full((h, w), values[0], np.uint8)
    for _ in range(8):
        y0, x0 = r.integers(0, h), r.integers(0, w)
        lab[y0:y0 + r.integers(2, h // 2 + 2), x0:x0 + r.integers(2, w // 2 + 2)] = r.choice(values)
    return lab


def make_cityscapes(root, split="train", n=4, h=32, w=64):
    """root/leftImg8bit/<split>/<city>/..._leftImg8bit.png + gtFine labelIds/labelTrainIds; returns root."""
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_{i:06d}_000019"
        idir = os.path.join(root, "leftImg8bit", split, city)
        ldir = os.path.join(root, "gtFine", split, city)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(ldir, exist_ok=True)
        Image.fromarray(smooth_image(h, w, i)).save(os.path.join(idir, f"{stem}_leftImg8bit.png"))
        ids = label_blocks(h, w, [7, 8, 11, 21, 23, 26, 0, 255], i)
        Image.fromarray(ids, mode="L").save(os.path.join(ldir, f"{stem}_gtFine_labelIds.png"))
        train = np.where(ids == 7, 0, np.where(ids == 8, 1, np.where(ids == 26, 13, 255))).astype(np.uint8)
        Image.fromarray(train, mode="L").save(os.path.join(ldir, f"{stem}_gtFine_labelTrainIds.png"))
        np.zeros((h, w), np.uint16)  # instance maps are not read
    return str(root)


def make_ade20k(root, split="training", sizes=((40, 60), (50, 30), (36, 36))):
    """root/ADEChallengeData2016/images/<split>/ADE_*.jpg + annotations/<split>/ADE_*.png; returns root."""
    base = os.path.join(root, "ADEChallengeData2016")
    pre = "train" if split == "training" else "val"
    idir, ldir = os.path.join(base, "images", split), os.path.join(base, "annotations", split)
    os.makedirs(idir, exist_ok=True)
    os.makedirs(ldir, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        stem = f"ADE_{pre}_{i + 1:08d}"
        Image.fromarray(smooth_image(h, w, 10 + i)).save(os.path.join(idir, stem + ".jpg"), quality=95)
        Image.fromarray(label_blocks(h, w, [0, 1, 5, 17, 150], i), mode="L").save(os.path.join(ldir, stem + ".png"))
    return str(root)


def make_ade_indoor(root, n=3, h=30, w=44, scenes=("bathroom", "kitchen")):
    """The authors' archive: root/<scene>/ADE_train_*.jpg next to ADE_train_*.png (values 0..94)."""
    for i in range(n):
        sdir = os.path.join(root, scenes[i % len(scenes)])
        os.makedirs(sdir, exist_ok=True)
        stem = f"ADE_train_{i + 1:08d}"
        Image.fromarray(smooth_image(h, w, 20 + i)).save(os.path.join(sdir, stem + ".jpg"), quality=95)
        Image.fromarray(label_blocks(h, w, [0, 3, 40, 94], i), mode="L").save(os.path.join(sdir, stem + ".png"))
    return str(root)
