"""End-to-end training on the built-in synthetic scenes at tiny size: all stages, sampling, exact resume."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from sbgan_fast.cli import main as cli_main
from sbgan_fast.train.trainer import Trainer, train

from tiny import folder_dataset, tiny_cfg


def state_of(trainer):
    return {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in trainer.nets.items()}


def assert_same(a, b, names):
    for name in names:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}.{k} differs"


def assert_same_optimizers(full, resumed):
    """Every optimizer state of trainer ``full`` equals ``resumed``'s."""
    for name, opt in full.optims.items():
        a, b = opt.state_dict()["state"], resumed.optims[name].state_dict()["state"]
        for i in a:
            for k in a[i]:
                assert torch.equal(a[i][k], b[i][k]), f"{name} optimizer state {i}.{k} differs"


@pytest.mark.slow
def test_demo_all_stages_and_sample(tmp_path):
    out = tmp_path / "run"
    t = train(tiny_cfg(out))
    ck = out / "checkpoints"
    for stage in ("seg", "spade", "e2e"):
        assert (ck / f"{stage}-final.pt").is_file()
    recs = [json.loads(line) for line in open(out / "stats.jsonl")]
    assert {r["stage"] for r in recs} == {"seg", "spade", "e2e"}
    for r in recs:
        for k, v in r.items():
            if isinstance(v, float):
                assert np.isfinite(v), (k, r)
    assert json.load(open(out / "config.json"))["data"]["height"] == 32
    samples = sorted(os.listdir(out / "samples"))
    assert any(s.startswith("e2e-") and s.endswith(".png") for s in samples)
    # the progressive schedule reached the final resolution
    assert max(r.get("res", 0) for r in recs if r["stage"] == "seg") == 16
    assert t.num_classes == 11

    # unconditional sampling from the run folder, fixed seed -> identical files
    for d in ("s1", "s2"):
        assert cli_main(["sample", "--checkpoint", str(out), "--n", "3", "--out", str(tmp_path / d), "--seed", "5"]) == 0
    files = sorted(os.listdir(tmp_path / "s1"))
    assert "00002_image.png" in files and "00002_label_color.png" in files and "grid.png" in files
    for f in files:
        assert open(tmp_path / "s1" / f, "rb").read() == open(tmp_path / "s2" / f, "rb").read(), f
    # synthesis from given label maps with G_spd alone
    from PIL import Image
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    Image.fromarray(np.random.randint(0, 11, (32, 32), dtype=np.uint8)).save(lab_dir / "a.png")
    assert cli_main(["sample", "--checkpoint", str(out / "checkpoints" / "spade-final.pt"), "--labels",
                     str(lab_dir), "--out", str(tmp_path / "s3")]) == 0
    img = np.asarray(Image.open(tmp_path / "s3" / "a_image.png"))
    assert img.shape == (32, 32, 3)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["seg", "spade"])
def test_resume_equals_uninterrupted(tmp_path, stage):
    full = train(tiny_cfg(tmp_path / "a", f"stages={stage}", max_steps=5))
    train(tiny_cfg(tmp_path / "b", f"stages={stage}", max_steps=2))
    resumed = train(tiny_cfg(tmp_path / "b", f"stages={stage}", max_steps=5), resume=True)
    assert_same(state_of(full), state_of(resumed), ("G_seg", "D_seg") if stage == "seg" else ("G_spd", "D_spd"))
    assert_same_optimizers(full, resumed)


@pytest.mark.slow
def test_resume_e2e(tmp_path):
    base = tmp_path / "base"
    train(tiny_cfg(base, "stages=seg,spade", max_steps=2))
    shutil.copytree(base, tmp_path / "a")
    shutil.copytree(base, tmp_path / "b")
    # 2 D2 pre-training steps, then joint steps; split inside the joint phase
    full = train(tiny_cfg(tmp_path / "a", "stages=e2e", max_steps=5), resume=True)
    train(tiny_cfg(tmp_path / "b", "stages=e2e", max_steps=3), resume=True)
    resumed = train(tiny_cfg(tmp_path / "b", "stages=e2e", max_steps=5), resume=True)
    assert_same(state_of(full), state_of(resumed), ("G_seg", "D_seg", "G_spd", "D_spd", "D2"))


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_cfg(tmp_path / "r", "stages=seg", max_steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_cfg(tmp_path / "r", "stages=seg", max_steps=1))


def test_e2e_without_previous_stages(tmp_path):
    with pytest.raises(FileNotFoundError, match="run --stage seg first"):
        train(tiny_cfg(tmp_path / "r", "stages=e2e", max_steps=1))


def test_missing_vgg_weights_is_a_clear_error(tmp_path):
    cfg = tiny_cfg(tmp_path / "r", "spade.vgg_loss=true", "stages=spade", max_steps=1)
    with pytest.raises(FileNotFoundError, match="vgg19"):
        Trainer(cfg)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_errors(capsys, tmp_path):
    assert cli_main(["train", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert cli_main(["train", "--preset", "cityscapes", "--out", str(tmp_path)]) == 2
    assert "data.root" in capsys.readouterr().err


def test_info_prints_exact_parameter_counts(capsys):
    assert cli_main(["info", "--preset", "cityscapes"]) == 0
    text = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[-1]) for line in text.splitlines()[1:]}
    assert round(counts["G_seg"] / 1e6, 2) == 27.33 and round(counts["D_seg"] / 1e6, 2) == 23.13
    assert round(counts["G_spd"] / 1e6, 1) == 93.0
    assert round(counts["D_spd"] / 1e6, 2) == 1.40 and round(counts["D2"] / 1e6, 2) == 1.33


def test_class_count_mismatch_names_the_file(tmp_path):
    from sbgan_fast.data.datasets import DataError
    cfg = tiny_cfg(tmp_path / "run", *folder_dataset(tmp_path, high={2: 8}), "stages=spade", max_steps=2)
    with pytest.raises(DataError, match=r"2\.png has values outside \[0, 5\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_seg_stage_on_files_without_a_cache_gives_a_hint(tmp_path, capsys):
    train(tiny_cfg(tmp_path / "run", *folder_dataset(tmp_path), "stages=seg", max_steps=1))
    assert "data.cache=DIR" in capsys.readouterr().err
    train(tiny_cfg(tmp_path / "synthetic", "stages=seg", max_steps=1))   # built-in scenes: nothing to cache
    assert "data.cache=DIR" not in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["epoch", "step"])
def test_spade_learning_rate_decay_rules(tmp_path, rule):
    """spade.epochs + epochs_decay = 1 + 1: the authors' rule runs both epochs at the full rate (the first
    decayed epoch keeps it); lr_decay=step lowers the rate at every step of the second epoch, linearly to 0."""
    t = Trainer(tiny_cfg(tmp_path / rule, "stages=spade", f"lr_decay={rule}", "spade.epochs=1",
                         "spade.epochs_decay=1", "spade.lr_G=1e-4", "spade.lr_D=4e-4"))
    stage, start = t.open_stage("spade")
    n = t.dataset_size / t.cfg.spade.batch_size
    assert start == 0 and stage.total_steps() == int(2 * n)
    for step in range(stage.total_steps()):
        e = step / n
        f = 1.0 if rule == "epoch" or e < 1 else 1.0 - (e - 1)
        lrs = stage.set_lr(step)
        assert lrs["lr_G_spd"] == pytest.approx(1e-4 * f, rel=1e-9), step
        assert lrs["lr_D_spd"] == pytest.approx(4e-4 * f, rel=1e-9), step
        assert t.optims["G_spd"].param_groups[0]["lr"] == lrs["lr_G_spd"]
    t.close()
