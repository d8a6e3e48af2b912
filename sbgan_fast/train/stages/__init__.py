"""The three training stages: ``seg`` (progressive WGAN-GP on label maps), ``spade`` (label-to-image pretraining
on real pairs) and ``e2e`` (joint fine-tuning of all five networks with D2), over what they share (:mod:`.base`);
and ``progan``, the paper's ProGAN baseline (the seg stage's progressive WGAN-GP on the images)."""
from .base import Means, Stage, StageContext, decay_factor, set_requires_grad
from .e2e import FINETUNE, E2EStage, e2e_decay
from .progan import ProGANStage
from .seg import Phase, SegStage
from .spade import SpadeStage, spade_d_losses, spade_g_losses

STAGE_CLASSES = {"seg": SegStage, "spade": SpadeStage, "e2e": E2EStage, "progan": ProGANStage}

__all__ = ["FINETUNE", "STAGE_CLASSES", "E2EStage", "Means", "Phase", "ProGANStage", "SegStage", "SpadeStage", "Stage",
           "StageContext", "decay_factor", "e2e_decay", "set_requires_grad", "spade_d_losses", "spade_g_losses"]
