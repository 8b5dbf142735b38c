"""SPLIT (EasyEdit: `spilt`): NLL terms for both completions, a preference margin and a reference guard.

    loss = pos_loss_weight * L_p + neg_loss_weight * L_n
         + margin_penalty_weight * relu(margin_threshold - (L_n - L_p))
         + ref_loss_weight * (relu(L_p - L_p_ref) + relu(L_n - L_n_ref))

`L_p`, `L_n`: per-token NLL of the winning and losing completion under the intervention at
the row's factor, pooled over the tokens of a minibatch chunk (what EasyEdit's SFTTrainer
reads from Hugging Face's `outputs.loss`); `*_ref` the same without intervention. As in
EasyEdit, `L_n` enters with a plus sign: with `neg_loss_weight > 0` the losing completion is
kept likely too (utility), while the margin term separates the two (preference).
Everything else (rows, factors, optimiser, saving) is the shared trainer's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..training import LossTerms, method_trainer, pooled_nll

if TYPE_CHECKING:  # annotations only
    from ..hparams import SplitHyperParams

ALG_NAME = "split"


def split_loss(terms: LossTerms, hparams: SplitHyperParams) -> torch.Tensor:
    """The SPLIT objective of one minibatch chunk."""
    matching_nll = pooled_nll(terms.target_nll_sum, terms.target_count)
    not_matching_nll = pooled_nll(terms.opposite_nll_sum, terms.opposite_count)
    loss = (
        hparams.pos_loss_weight * matching_nll
        + hparams.neg_loss_weight * not_matching_nll
        + hparams.margin_penalty_weight * F.relu(hparams.margin_threshold - (not_matching_nll - matching_nll))
    )
    if hparams.ref_loss_weight:
        matching_ref = pooled_nll(terms.target_ref_nll_sum, terms.target_count)
        not_matching_ref = pooled_nll(terms.opposite_ref_nll_sum, terms.opposite_count)
        loss = loss + hparams.ref_loss_weight * (
            F.relu(matching_nll - matching_ref) + F.relu(not_matching_nll - not_matching_ref)
        )
    return loss


def needs_reference(hparams: SplitHyperParams) -> bool:
    return bool(hparams.ref_loss_weight)


train = method_trainer(ALG_NAME, split_loss, needs_reference)
