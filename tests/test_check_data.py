"""`sbgan-fast check-data`: every problem of a dataset reported, naming the file; exit status."""
import os

import numpy as np
from PIL import Image

from real_lookalike import make_ade20k, make_cityscapes
from sbgan_fast.cli import main


def test_check_data_clean(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", n=3)
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "3 pair(s) checked, 0 problem(s)" in out and "BAD" not in out


def test_check_data_reports_every_problem(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", n=6, h=32, w=64)
    img = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "leftImg8bit")) for f in fs)
    lab = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "gtFine")) for f in fs
                 if f.endswith("_labelIds.png"))
    data = open(img[0], "rb").read()
    with open(img[0], "wb") as f:                                                   # truncated image
        f.write(data[: len(data) // 2])
    Image.fromarray(np.full((32, 64), 77, np.uint8), mode="L").save(lab[1])       # value out of range
    Image.fromarray(np.zeros((16, 64), np.uint8), mode="L").save(lab[2])          # size mismatch
    os.remove(lab[3])                                                               # missing pair
    with open(img[4], "wb") as f:                                                   # unreadable
        f.write(b"garbage")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(lab[5])                  # colour-coded label
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 6, out
    for path, what in ((img[0], "truncated"), (lab[1], "77"), (img[2], "16"), (img[3], "no label map"),
                       (img[4], "cannot read"), (lab[5], "mode")):
        assert any(path in b and what in b for b in bad), (path, what, out)
    assert "6 pair(s) checked, 6 problem(s)" in out
    # headers only: the cheap problems
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root, "--headers-only"]) == 1
    out = capsys.readouterr().out
    assert sum(line.startswith("BAD ") for line in out.splitlines()) == 4


def test_check_data_layout_and_other_datasets(tmp_path, capsys):
    assert main(["check-data", "--preset", "cityscapes", "--data-root", str(tmp_path)]) == 1
    assert "wrong dataset layout" in capsys.readouterr().out
    root = make_ade20k(tmp_path / "ade")
    assert main(["check-data", "--preset", "ade_indoor", "--data-root", root, "data.dataset=ade20k",
                 "data.num_classes=151"]) == 0
    assert "3 pair(s) checked, 0 problem(s)" in capsys.readouterr().out
    assert main(["check-data", "--preset", "demo"]) == 0


# ------------------------------------------------------------------------------------------- splits
def _extras(tmp_path, n=2):
    """Cityscapes-25K style extra images (train ids) with their list; the config keys."""
    img, lab = tmp_path / "extra_img" / "erlangen", tmp_path / "extra_lab" / "erlangen"
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    names = []
    for i in range(n):
        Image.fromarray(np.full((32, 64, 3), 40 * i, np.uint8)).save(img / f"erlangen_{i:06d}_000000_leftImg8bit.png")
        Image.fromarray(np.full((32, 64), i, np.uint8), mode="L").save(
            lab / f"erlangen_{i:06d}_000000_gtFine_labelTrainIds.png")
        names.append(f"erlangen/erlangen_{i:06d}_000000_leftImg8bit.png")
    (tmp_path / "extra.txt").write_text("\n".join(names) + "\n")
    return [f"data.extra_image_dir={tmp_path / 'extra_img'}", f"data.extra_label_dir={tmp_path / 'extra_lab'}",
            f"data.extra_list={tmp_path / 'extra.txt'}"]


def test_check_data_checks_every_split_it_will_read(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", n=3)
    make_cityscapes(tmp_path / "cs", split="val", n=2)
    bad = os.path.join(root, "gtFine", "val", "bochum", "bochum_000001_000019_gtFine_labelIds.png")
    Image.fromarray(np.full((32, 64), 77, np.uint8), mode="L").save(bad)
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("BAD ") and bad in line for line in out.splitlines()), out
    assert "cityscapes train at" in out and "3 pair(s) checked, 0 problem(s)" in out
    assert "cityscapes val at" in out and "2 pair(s) checked, 1 problem(s)" in out
    assert "split(s) checked: train, val" in out
    # --split narrows it
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root, "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "split(s) checked: train" in out and "val at" not in out
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root, "--split", "val"]) == 1
    assert "split(s) checked: val" in capsys.readouterr().out


def test_check_data_missing_validation_split(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", n=3)
    # no validation split: said, not an error unless the configuration reads it during training
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "WARN" in out and "val" in out and "split(s) checked: train" in out
    assert main(["check-data", "--preset", "cityscapes", "--data-root", root, "--fid-every", "100"]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and os.path.join(root, "leftImg8bit", "val") in out


def test_extra_images_belong_to_the_training_split(tmp_path, capsys):
    from sbgan_fast.metrics.evaluate import build_eval_dataset
    from sbgan_fast.config import build_config
    root = make_cityscapes(tmp_path / "cs", n=3)
    make_cityscapes(tmp_path / "cs", split="val", n=2)
    extra = _extras(tmp_path)
    assert main(["check-data", "--preset", "cityscapes25k", "--data-root", root, *extra]) == 0
    out = capsys.readouterr().out
    assert "cityscapes train at" in out and "5 pair(s) checked" in out   # 3 + 2 extra
    assert "2 pair(s) checked" in out.split("cityscapes val at")[1]
    cfg = build_config("cityscapes25k", None, [f"data.root={root}", *extra])
    val, _ = build_eval_dataset(cfg, 20)
    assert len(val) == 2 and all("erlangen" not in p for p in val.label_paths)
