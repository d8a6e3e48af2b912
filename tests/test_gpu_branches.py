"""The GPU-only branches of the data pipeline, checked without a GPU: the DALI graph built for a device (mixed
decoding, labels not resampled), the cache placement decision, ``fits_on_device`` arithmetic, and the parts of
those branches that run the same on the CPU (batch contract of the fallback path, label dtypes, EXIF tags)."""
import types as pytypes

import numpy as np
import pytest
import torch
from PIL import Image

from real_lookalike import make_ade20k, make_cityscapes
from sbgan_fast.data import cache as cache_mod
from sbgan_fast.data.cache import build_cache, fits_on_device
from sbgan_fast.data.dali import dali_status
from sbgan_fast.data.layouts import ade20k, cityscapes

DALI_OK, DALI_WHY = dali_status()
needs_dali = pytest.mark.skipif(not DALI_OK, reason=f"DALI unavailable: {DALI_WHY}")


# ------------------------------------------------------------------ fits_on_device
def test_fits_on_device_uses_free_memory_and_margin(monkeypatch):
    seen = []

    def mem_get_info(device=None):
        seen.append(device)
        return 1000, 4000          # (free, total) bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    dev = torch.device("cuda", 1)
    assert fits_on_device(500, dev) and not fits_on_device(501, dev)           # half of the free memory
    assert fits_on_device(900, dev, margin=0.1) and not fits_on_device(901, dev, margin=0.1)
    assert fits_on_device(1000, dev, margin=0.0) and not fits_on_device(1001, dev, margin=0.0)
    assert seen and all(torch.device(d) == dev for d in seen)                  # asks the device in question
    assert fits_on_device(10 ** 15, "cpu")                                     # never asks for the CPU
    with pytest.raises(ValueError, match="margin"):
        fits_on_device(1, dev, margin=1.0)


# ------------------------------------------------------------------ factory: cache placement
class _FakeCache:
    def __init__(self, nbytes):
        self.nbytes, self.moved_to = nbytes, None

    def to_device(self, dev):
        self.moved_to = torch.device(dev)
        return self


def _finish_with(monkeypatch, *, device, cache_gpu=True, cuda=True, free=10 ** 9, nbytes=100, current=3):
    from sbgan_fast.data import factory
    fake = _FakeCache(nbytes)
    monkeypatch.setattr(cache_mod, "build_cache", lambda ds, d: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (free, 2 * free))
    cfg = pytypes.SimpleNamespace(device=device, data=pytypes.SimpleNamespace(cache="/unused", cache_gpu=cache_gpu,
                                                                              loader="auto"))
    out = factory._finish(object(), cfg)
    assert out is fake and out.loader_options == {"loader": "auto"}
    return fake


def test_finish_places_cache_on_this_process_gpu(monkeypatch):
    # 'auto' and 'cuda' mean the current device of this process (each distributed process has its own)
    assert _finish_with(monkeypatch, device="auto").moved_to == torch.device("cuda", 3)
    assert _finish_with(monkeypatch, device="cuda").moved_to == torch.device("cuda", 3)
    assert _finish_with(monkeypatch, device="cuda:1").moved_to == torch.device("cuda", 1)


def test_finish_keeps_cache_on_host(monkeypatch, capsys):
    assert _finish_with(monkeypatch, device="cpu").moved_to is None
    assert _finish_with(monkeypatch, device="auto", cuda=False).moved_to is None
    assert _finish_with(monkeypatch, device="auto", cache_gpu=False).moved_to is None
    assert _finish_with(monkeypatch, device="auto", free=150, nbytes=100).moved_to is None   # > half of free
    assert "does not fit" in capsys.readouterr().err


# ------------------------------------------------------------------ resident cache: uint16 labels
def test_resident_cache_keeps_uint16_label_values(tmp_path):
    ds = cityscapes(make_cityscapes(tmp_path / "cs", n=2, h=16, w=32), height=8, width=16)
    cached = build_cache(ds, str(tmp_path / "cache"))
    # a 16-bit store with values above the int16 range (held bit for bit on the device)
    lab = np.asarray(cached.labels).astype(np.uint16)
    lab[:5] = [40000, 65535, 32768, 1, 0]
    cached.labels = lab
    ref = [cached[i]["label"].clone() for i in range(len(cached))]
    cached.to_device("cpu")
    got = [cached[i]["label"] for i in range(len(cached))]
    assert ref[0].flatten()[:5].tolist() == [40000, 65535, 32768, 1, 0]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


# ------------------------------------------------------------------ DALI graph for a GPU
def _walk(node):
    """(schema name, device, init args) of the operators behind a DALI DataNode, output first."""
    out = []
    while node is not None:
        inst = node.source
        op = inst._op
        out.append((getattr(op, "schema_name", type(op).__name__), op.device, dict(getattr(op, "_init_args", {}))))
        node = inst.inputs[0] if inst.inputs else None
    return out


@needs_dali
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_dali_gpu_graph(tmp_path, interp):
    from nvidia.dali import types
    from sbgan_fast.data.dali import DaliLoader
    ds = cityscapes(make_cityscapes(tmp_path, n=2, h=32, w=64), height=16, width=32, image_interp=interp)
    loader = DaliLoader(ds, [[0, 1]], device_id=0)
    assert loader.out_device == torch.device("cuda", 0)
    p = loader._define(2, lambda: None)           # defined only: building needs the GPU
    img, lab, meta = p._graph_out
    assert (img.device, lab.device, meta.device) == ("gpu", "gpu", "cpu")
    chain = _walk(img)
    names = [c[0] for c in chain]
    assert names == ["Transpose", "Resize", "Slice", "decoders__Image", "ExternalSource"], names
    transpose, resize, slc, dec, _ = chain
    assert transpose[2]["perm"] == [2, 0, 1]                                  # HWC -> CHW
    assert resize[1] == "gpu" and resize[2]["resize_x"] == 32 and resize[2]["resize_y"] == 16
    assert resize[2]["interp_type"] == (types.INTERP_CUBIC if interp == "bicubic" else types.INTERP_LINEAR)
    assert resize[2]["antialias"] is True
    assert slc[1] == "gpu" and slc[2]["axis_names"] == "WH"
    assert slc[2]["normalized_anchor"] is False and slc[2]["normalized_shape"] is False
    assert dec[1] == "mixed" and dec[2]["output_type"] == types.RGB
    assert dec[2]["adjust_orientation"] is False and dec[2]["jpeg_fancy_upsampling"] is True
    # label maps: moved to the GPU as they come from the dataset's nearest path, never resampled in DALI
    assert [c[0] for c in _walk(lab)] == ["ExternalSource"]
    # the crop window inputs of the GPU slice come from the host
    slice_inst = img.source.inputs[0].source.inputs[0].source
    assert [n.device for n in slice_inst.inputs[1:]] == ["cpu", "cpu"]


@needs_dali
def test_dali_cpu_graph_has_no_gpu_ops(tmp_path):
    from sbgan_fast.data.dali import DaliLoader
    ds = cityscapes(make_cityscapes(tmp_path, n=2, h=32, w=64), height=16, width=32)
    img, lab, meta = DaliLoader(ds, [[0, 1]])._define(2, lambda: None)._graph_out
    assert (img.device, lab.device, meta.device) == ("cpu", "cpu", "cpu")
    dec = [c for c in _walk(img) if c[0] == "decoders__Image"][0]
    assert dec[1] == "cpu" and dec[2]["adjust_orientation"] is False and "jpeg_fancy_upsampling" not in dec[2]


# ------------------------------------------------------------------ DALI parts shared by both branches
@needs_dali
def test_dali_fallback_batch_contract(tmp_path):
    from sbgan_fast.data.dali import DaliLoader
    ds = cityscapes(make_cityscapes(tmp_path, n=2, h=32, w=64), height=16, width=32)
    loader = DaliLoader(ds, [[0, 1]])
    loader.out_device = torch.device("meta")       # stands in for the GPU
    b = loader._python_batch([0, 1])
    assert b["image"].device.type == "meta" and b["label"].device.type == "meta"
    assert b["image"].dtype == torch.uint8 and b["label"].dtype == torch.int64
    assert b["index"].device.type == "cpu" and b["skipped"].device.type == "cpu"      # as in the DALI batches
    assert b["index"].dtype == torch.int64 and b["skipped"].dtype == torch.int64


@needs_dali
def test_dali_label_dtype_is_one_per_dataset(tmp_path):
    from sbgan_fast.data.dali import DaliLoader
    ds = cityscapes(make_cityscapes(tmp_path, n=2, h=32, w=64), height=16, width=32)
    assert DaliLoader(ds, [])._label_dtype == np.uint8
    lut = np.full(400, -1, np.int32)
    lut[: ds.lut.size] = ds.lut
    lut[399] = 300                                   # a value table reaching past 255 (maps may not)
    ds.lut = lut
    loader = DaliLoader(ds, [])
    labels = loader._prepare([0, 1])[3]
    assert {a.dtype for a in labels} == {np.dtype(np.int32)}


@needs_dali
def test_dali_ignores_exif_orientation_like_the_python_path(tmp_path):
    from sbgan_fast.data.dali import DaliLoader
    from sbgan_fast.data.loaders import build_loader
    ds = ade20k(make_ade20k(tmp_path, sizes=((40, 60), (36, 36))), height=16, width=16, seed=1)
    for p in ds.image_paths:                         # same pixels, tagged "rotate 180 degrees"
        im = Image.open(p).convert("RGB")
        exif = Image.Exif()
        exif[0x0112] = 3
        im.save(p, quality=95, exif=exif)
    batches = [[(0, 0), (1, 0)]]
    t = list(build_loader(ds, batches, loader="torch", device="cpu"))[0]
    d = list(DaliLoader(ds, batches))[0]
    assert torch.equal(d["label"], t["label"])
    diff = (d["image"].int() - t["image"].int()).abs()
    assert diff.float().mean() <= 2.0, diff.float().mean()


def test_chunked_copy_matches_the_array():
    from sbgan_fast.data.cache import _chunked_copy
    a = np.arange(1000, dtype=np.uint8)
    assert torch.equal(_chunked_copy(a, torch.device("cpu"), chunk=64), torch.from_numpy(a))
    b = np.array([0, 1, 40000, 65535], np.uint16).view(np.int16)
    out = _chunked_copy(b, torch.device("cpu"), chunk=3)
    assert out.dtype == torch.int16 and (out.long() & 0xFFFF).tolist() == [0, 1, 40000, 65535]
    assert _chunked_copy(a, torch.device("meta"), chunk=300).shape == (1000,)
