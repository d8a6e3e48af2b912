"""spade.contain_dontcare_label (the authors' option) with data.dontcare: every network sees num_classes label
channels, the last the don't-care one; the SPADE networks count it apart from their classes."""
import pytest
import torch

from sbgan_fast.config import ConfigError
from sbgan_fast.models import build_networks
from tiny import tiny_cfg


def test_contain_dontcare_label_needs_data_dontcare(tmp_path):
    with pytest.raises(ConfigError, match="data.dontcare"):
        tiny_cfg(tmp_path / "r", "spade.contain_dontcare_label=true")


def test_contain_dontcare_label_networks_see_num_classes_channels(tmp_path):
    k = 6
    for flag in ("false", "true"):
        cfg = tiny_cfg(tmp_path / "r", f"spade.contain_dontcare_label={flag}", "data.dontcare=255")
        nets = build_networks(cfg, k, names=("G_spd", "D_spd"))
        assert nets["G_spd"].semantic_nc == k
        assert nets["D_spd"].input_nc == k + 3


def test_spade_step_with_contain_dontcare_label(tmp_path):
    """A spade step on labels holding the don't-care value: D_spd takes the one-hot map (num_classes channels) and
    the image, G_spd the channel indices (the don't-care value as the last channel)."""
    from sbgan_fast.train.trainer import Trainer
    from tiny import folder_dataset
    data = folder_dataset(tmp_path, classes=4)
    cfg = tiny_cfg(tmp_path / "run", *data, "data.num_classes=5", "data.dontcare=255",
                   "spade.contain_dontcare_label=true", "stages=spade", max_steps=1)
    t = Trainer(cfg)
    try:
        stage, start = t.open_stage("spade")
        labels = torch.randint(0, 4, (4, 32, 32))
        labels[:, :5] = 255
        stats = stage.step(start, {"label": labels, "image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)})
        assert all(torch.isfinite(v) for v in stats.values())
    finally:
        t.close()
