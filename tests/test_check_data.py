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
