"""The data layer's module contracts: shared machinery has public names, one rule for the don't-care channel."""
import ast
import os

import numpy as np
import pytest

from sbgan_fast.data.files import DataError
from sbgan_fast.data.layouts import folder
from sbgan_fast.data.values import class_values

PKG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sbgan_fast")
AREA = [os.path.join(PKG, "data", f) for f in sorted(os.listdir(os.path.join(PKG, "data"))) if f.endswith(".py")] + \
    [os.path.join(PKG, "metrics", f) for f in ("fid.py", "frechet.py", "inception.py", "inception_net.py")]


def private_imports(paths):
    """``path: from <module> import <_name>`` for every import of a private name of another package module."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sbgan_fast")):
                out += [f"{os.path.relpath(path, PKG)}: from {'.' * node.level}{node.module or ''} import {a.name}"
                        for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return out


def test_no_module_imports_another_modules_private_names():
    assert private_imports(AREA) == []


def test_the_private_import_reader_sees_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from .datasets import DataError, _list_files\n")
    assert private_imports([str(bad)]) == [f"{os.path.relpath(str(bad), PKG)}: from .datasets import _list_files"]


def test_class_values_leave_the_last_channel_to_dontcare(tmp_path):
    """K counts the don't-care channel: K=5 with a don't-care value has the classes 0..3; without one, 0..4."""
    assert class_values(5, 255) == [0, 1, 2, 3]
    assert class_values(5, None) == [0, 1, 2, 3, 4]
    from PIL import Image
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.array([[0, 3, 255, 3]] * 4, np.uint8)).save(tmp_path / "lab" / "a.png")
    ds = folder(tmp_path / "img", tmp_path / "lab", 5, dontcare=255, height=None, width=None)
    assert ds[0]["label"][0].tolist() == [0, 3, 255, 3]
    Image.fromarray(np.array([[0, 4, 255, 3]] * 4, np.uint8)).save(tmp_path / "lab" / "a.png")
    with pytest.raises(DataError, match=r"outside \[0, 4\) and the don't-care value 255"):
        ds[0]                            # 4 would be the don't-care channel, not a class
