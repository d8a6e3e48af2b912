"""Checkpoints are untrusted input: weights-only loading (a crafted pickle never runs), a checksum of the
payload, and a comparison with the run's configuration before anything is written."""
import os
import shutil

import numpy as np
import pytest
import torch

from sbgan_fast.cli import main as cli_main
from sbgan_fast.errors import CheckpointError
from sbgan_fast.train import checkpoint as ckpt_io
from sbgan_fast.train.trainer import train

from tiny import tiny_cfg


@pytest.fixture(scope="module")
def seg_run(module_tmp):
    out = module_tmp / "seg"
    train(tiny_cfg(out, "stages=seg", max_steps=2))
    return out


class _Payload:
    """Unpickling this runs ``exec``: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _evil_checkpoint(path, marker):
    torch.save({"format": ckpt_io.FORMAT, "stage": "seg", "step": 1, "done": False, "config": {},
                "num_classes": 11, "nets": {"G_seg": {"w": torch.zeros(1)}}, "x": _Payload(marker)}, path)


@pytest.mark.slow
def test_a_crafted_pickle_payload_does_not_run(tmp_path, capsys, seg_run):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pt"
    _evil_checkpoint(evil, marker)
    with pytest.raises(CheckpointError, match="builtins.exec") as info:
        ckpt_io.load_checkpoint(str(evil))
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    # sample (and eval, which loads through the same function)
    assert cli_main(["sample", "--checkpoint", str(evil), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(evil) in err and not marker.exists()
    # train --resume on a run folder holding it
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    _evil_checkpoint(run / "checkpoints" / "seg-latest.pt", marker)
    with pytest.raises(CheckpointError, match="seg-latest.pt"):
        train(tiny_cfg(run, "stages=seg", max_steps=3), resume=True)
    assert not marker.exists()
    # --seg-checkpoint of the synthetic label maps
    with pytest.raises(CheckpointError, match="evil.pt"):
        train(tiny_cfg(tmp_path / "aug", "stages=spade", "spade.synthetic_labels=4", max_steps=1,
                       **{"spade.seg_checkpoint": str(evil)}))
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(seg_run):
    path = seg_run / "checkpoints" / "seg-latest.pt"
    ck = torch.load(path, map_location="cpu", weights_only=True)    # no allow-list needed
    assert ck["format"] == ckpt_io.FORMAT
    assert isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)
    # the stored states restore the generators exactly
    np.random.seed(123)
    torch.manual_seed(5)
    state = ckpt_io.rng_state()
    a = (np.random.rand(3), torch.rand(3))
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt_io.set_rng_state(state)
    b = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.slow
def test_checkpoints_of_the_previous_format_still_load(seg_run, tmp_path):
    """Format sbgan_fast/1 stored the NumPy RNG state as an array: loaded with NumPy's array types allowed."""
    run = tmp_path / "old"
    shutil.copytree(seg_run, run)
    path = run / "checkpoints" / "seg-latest.pt"
    ck = torch.load(path, map_location="cpu", weights_only=True)
    np.random.seed(7)
    legacy_np = np.random.get_state()
    ck["format"] = "sbgan_fast/1"
    ck.pop("sha256", None)
    ck["rng"]["numpy"] = legacy_np
    torch.save(ck, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)            # plain weights-only loading refuses the array
    old = ckpt_io.load_checkpoint(str(path))
    assert old["format"] == "sbgan_fast/1"
    np.random.seed(0)
    ckpt_io.set_rng_state(old["rng"])
    expect = np.random.RandomState()
    expect.set_state(legacy_np)
    assert np.array_equal(np.random.rand(4), expect.rand(4))
    train(tiny_cfg(run, "stages=seg", max_steps=3), resume=True)   # resumes from it
    assert ckpt_io.load_checkpoint(str(path))["step"] == 3


def _records(path):
    """(name, data offset, size) of each record of a torch.save zip file."""
    import struct
    import zipfile
    out = []
    raw = open(path, "rb").read()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            out.append((info.filename, info.header_offset + 30 + n + m, info.file_size))
    return out


def _flip(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x5A
    open(path, "wb").write(bytes(data))


def test_a_flipped_byte_is_found_by_the_checksum(seg_run, tmp_path):
    src = seg_run / "checkpoints" / "seg-latest.pt"
    assert ckpt_io.load_checkpoint(str(src))["sha256"]
    # in the middle of the biggest tensor
    path = tmp_path / "a.pt"
    shutil.copy(src, path)
    name, start, size = max((r for r in _records(path) if "/data/" in r[0]), key=lambda r: r[2])
    _flip(path, start + size // 2)
    torch.load(path, weights_only=True)                  # torch itself loads it without complaint
    with pytest.raises(CheckpointError, match="damaged") as info:
        ckpt_io.load_checkpoint(str(path))
    assert str(path) in str(info.value)
    # in a small optimizer tensor (the Adam step count of one parameter)
    ck = torch.load(src, weights_only=True)
    small = {int(t.untyped_storage().nbytes()) for t in ck["optims"]["G_seg"]["state"][0].values()}
    path = tmp_path / "b.pt"
    shutil.copy(src, path)
    name, start, size = min((r for r in _records(path) if "/data/" in r[0] and r[2] in small), key=lambda r: r[2])
    _flip(path, start)
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt_io.load_checkpoint(str(path))
    # in the pickled structure: a config string changed by one byte still unpickles
    path = tmp_path / "c.pt"
    shutil.copy(src, path)
    name, start, size = next(r for r in _records(path) if r[0].endswith("data.pkl"))
    pos = open(path, "rb").read().index(b"spectralinstance", start, start + size)
    _flip(path, pos + 3)
    with pytest.raises(CheckpointError, match="damaged|cannot be read"):
        ckpt_io.load_checkpoint(str(path))
    # the middle byte of the file
    path = tmp_path / "d.pt"
    shutil.copy(src, path)
    _flip(path, os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=str(path)):
        ckpt_io.load_checkpoint(str(path))


def _unchanged(run):
    return {name: (run / name).read_bytes() for name in ("config.json", "stats.jsonl")}


def test_an_architecture_mismatch_on_resume_names_key_values_and_file(seg_run, tmp_path):
    from sbgan_fast.errors import CheckpointMismatchError
    run = tmp_path / "r"
    shutil.copytree(seg_run, run)
    before = _unchanged(run)
    with pytest.raises(CheckpointMismatchError) as info:
        train(tiny_cfg(run, "stages=seg", "seg.width_mult=0.125", max_steps=3), resume=True)
    msg = str(info.value)
    assert "seg.width_mult=0.0625" in msg and "seg.width_mult=0.125" in msg and "seg-latest.pt" in msg
    assert _unchanged(run) == before                      # config.json and stats.jsonl untouched
    # a different class count
    with pytest.raises(CheckpointMismatchError, match=r"11 label classes, this run has 12.*num_classes"):
        train(tiny_cfg(run, "stages=seg", "data.num_classes=12", max_steps=3), resume=True)
    assert _unchanged(run) == before


@pytest.mark.slow
def test_the_e2e_stage_checks_the_earlier_stages_checkpoints(tmp_path):
    from sbgan_fast.errors import CheckpointMismatchError
    run = tmp_path / "r"
    train(tiny_cfg(run, "stages=seg,spade", max_steps=1))
    before = _unchanged(run)
    with pytest.raises(CheckpointMismatchError, match=r"spade-latest.pt was written with spade.ngf=8, this run has "
                                                      r"spade.ngf=16"):
        train(tiny_cfg(run, "stages=e2e", "spade.ngf=16", max_steps=1))
    # a setting outside the named keys that changes the networks: the entry is named
    with pytest.raises(CheckpointMismatchError,
                       match=r"spade-latest.pt: G_spd\.\S+ is shape \(\) in the checkpoint but absent"):
        train(tiny_cfg(run, "stages=e2e", "spade.norm_G=spectralspadeinstance3x3", max_steps=1))
    assert _unchanged(run) == before
    assert not (run / "checkpoints" / "e2e-latest.pt").exists()
