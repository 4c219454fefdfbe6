"""The DD student's FAR backbone, built from the teacher's own modules (issue #13; DD Sec. 3.3).

Sequence ``[class, x_1 .. x_n]`` (n + 1 positions), the teacher's causal blocks. ``x_i`` is a
continuous C-dim input: the noise of token ``i`` or, before the AR-step boundary, the token
itself (Eq. 5 for continuous tokens). The output at position ``i`` (1..n) has seen
``x_1 .. x_i`` and predicts token ``i``: the noise ``x_i`` decides token ``i`` given the prefix
(the head's deterministic sampler, the pairs' map), so it must be seen.

Pieces:
- ``input_proj``: the student's input projection, a new ``Linear(C -> dim)`` initialised from
  the teacher's ``token_proj``: the inputs live in the teacher's token space (data positions are
  exactly what the teacher was fed), unlike LlamaGen's student, whose inputs are codebook
  vectors the teacher never embedded that way.
- ``flag_embedding``: the learned noise/data flag ``Embedding(2, dim)``, zero-initialised.
- ``pos_emb``: ``n + 1`` learned positions; the teacher's ``n`` copied, the extra last one
  initialised as a copy of the teacher's last.
- trainable copies of ``class_emb`` (the null row included, unused), ``blocks`` and ``norm``.
- the embedding head only, a new ``Linear(dim -> C)``: there is no codebook, so no logits.

The teacher stays frozen; every reused module is a deep copy in training mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from teachers.far.model import FARCausal

NUM_FLAGS = 2  # 0 = noise, 1 = data


class FARStudentBackbone(nn.Module):
    """``backbone(labels [B], inputs [B, n, C], is_data [B, n] bool) -> embeddings
    [B, n + 1, C]`` (float32); position 0 is the class position, ``i + 1`` predicts token ``i``
    (the continuous form of ``Teacher.student_backbone``'s contract, without logits)."""

    def __init__(self, model: FARCausal) -> None:
        super().__init__()
        config = model.config
        self.num_tokens, self.code_dim = config.num_tokens, config.token_dim
        self.class_emb = copy.deepcopy(model.class_emb)
        self.input_proj = copy.deepcopy(model.token_proj)
        self.flag_embedding = nn.Embedding(NUM_FLAGS, config.dim)
        nn.init.zeros_(self.flag_embedding.weight)  # at init data inputs embed as the teacher's
        teacher_pos = model.pos_emb.detach()
        self.pos_emb = nn.Parameter(torch.cat([teacher_pos, teacher_pos[:, -1:]], dim=1).clone())
        self.blocks = copy.deepcopy(model.blocks)
        self.norm = copy.deepcopy(model.norm)
        self.embedding_out = nn.Linear(config.dim, config.token_dim)
        self.requires_grad_(True)
        self.train()

    def forward(
        self, labels_B: torch.Tensor, inputs_BNC: torch.Tensor, is_data_BN: torch.Tensor
    ) -> torch.Tensor:
        image_BND = self.input_proj(inputs_BNC.float()) + self.flag_embedding(is_data_BN.long())
        h_BTD = torch.cat([self.class_emb(labels_B)[:, None], image_BND], dim=1)  # T = n + 1
        h_BTD = h_BTD + self.pos_emb[:, : h_BTD.shape[1]]
        for layer, block in enumerate(self.blocks):
            h_BTD = block(h_BTD, None, layer)  # causal attention over the whole sequence
        return self.embedding_out(self.norm(h_BTD)).float()
