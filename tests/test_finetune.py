"""e2e.finetune: the paper's fine-tuning ablation (fine-tune the semantic bottleneck synthesis only, the
conditional image synthesis only, or both)."""
import shutil

import pytest
import torch

from sbgan_fast.config import ConfigError
from sbgan_fast.train.trainer import Trainer, train

from tiny import tiny_cfg

ALL = ("G_seg", "D_seg", "G_spd", "D_spd", "D2")


@pytest.fixture(scope="module")
def base(module_tmp):
    out = module_tmp / "base"
    train(tiny_cfg(out, "stages=seg,spade", max_steps=2))
    return out


def _params(trainer):
    return {name: {k: v.detach().clone() for k, v in net.named_parameters()} for name, net in trainer.nets.items()}


def _run(base, tmp_path, mode):
    out = tmp_path / mode
    shutil.copytree(base, out)
    cfg = tiny_cfg(out, "stages=e2e", f"e2e.finetune={mode}", "e2e.d2_pretrain_epochs=0", max_steps=2)
    t = Trainer(cfg, resume=True)
    from sbgan_fast.train.stages import E2EStage
    t._init_stage(E2EStage(t))        # the networks e2e starts from (seg and spade checkpoints)
    start = _params(t)
    t.close()
    done = train(cfg, resume=True)
    return start, _params(done), done


@pytest.mark.parametrize("mode,trained", [("seg", ("G_seg", "D_seg", "D2")), ("spade", ("G_spd", "D_spd", "D2")),
                                          ("all", ALL)])
@pytest.mark.slow
def test_finetune_trains_only_its_networks(base, tmp_path, mode, trained):
    start, end, t = _run(base, tmp_path, mode)
    assert set(t.optims) == set(trained)
    for name in ALL:
        moved = any(not torch.equal(start[name][k], end[name][k]) for k in start[name])
        assert moved == (name in trained), f"finetune={mode}: {name} {'did not move' if not moved else 'moved'}"
    # the checkpoint still holds all five networks (a fixed one as loaded)
    ck = torch.load(tmp_path / mode / "checkpoints" / "e2e-latest.pt", weights_only=False)
    assert set(ck["nets"]) == set(ALL) and set(ck["optims"]) == set(trained)


def test_finetune_rejects_unknown_values(tmp_path):
    with pytest.raises(ConfigError, match="e2e.finetune"):
        tiny_cfg(tmp_path, "e2e.finetune=both")
