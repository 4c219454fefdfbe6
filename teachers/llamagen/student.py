"""The DD student's LlamaGen backbone, built from the teacher's own modules (FACTS.md section 1).

Sequence ``[class, x_1 .. x_n]`` (n + 1 positions, the teacher's full RoPE table), plain causal
mask. ``x_i`` is a continuous C-dim input: noise or a codebook vector (Eq. 5), projected by a
new ``Linear(C -> dim)``; a learned noise/data flag ``Embedding(2, dim)`` is added to every
image position. The output at position ``i`` (1..n) sees ``x_1 .. x_i`` and predicts token
``i``: the noise ``x_i`` is what decides token ``i`` given the prefix (Alg. 1), so it must be
seen. Position 0 (the class) sees only the class: its logits are the teacher's first-token
logits at initialisation.

Heads: logits from copies of the teacher's ``norm`` and ``output``; the C-dim embedding from a
copy of ``norm`` and a new ``Linear(dim -> C)``. Every reused module is a trainable deep copy;
the teacher stays frozen.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from teachers.llamagen.gpt import GPT

NUM_FLAGS = 2  # 0 = noise, 1 = data


class LlamaGenStudentBackbone(nn.Module):
    """The student trunk and heads (the call contract: ``Teacher.student_backbone``)."""

    def __init__(self, gpt: GPT, code_dim: int) -> None:
        super().__init__()
        config = gpt.config
        if config.cls_token_num != 1:
            raise ValueError(f"the DD student needs cls_token_num 1, got {config.cls_token_num}")
        self.num_tokens, self.code_dim = config.block_size, code_dim
        self.cls_embedding = copy.deepcopy(gpt.cls_embedding)
        self.layers = copy.deepcopy(gpt.layers)
        self.norm = copy.deepcopy(gpt.norm)
        self.output = copy.deepcopy(gpt.output)
        self.input_proj = nn.Linear(code_dim, config.dim)
        # Zero-initialised: at initialisation the trunk computes exactly the teacher's function.
        self.flag_embedding = nn.Embedding(NUM_FLAGS, config.dim)
        nn.init.zeros_(self.flag_embedding.weight)
        self.embedding_norm = copy.deepcopy(gpt.norm)
        self.embedding_out = nn.Linear(config.dim, code_dim)
        self.register_buffer("freqs_cis", gpt.build_freqs_cis().clone(), persistent=False)
        self.requires_grad_(True)
        self.train()

    def forward(
        self, labels_B: torch.Tensor, inputs_BNC: torch.Tensor, is_data_BN: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_BND = self.input_proj(inputs_BNC) + self.flag_embedding(is_data_BN.long())
        h_BTD = torch.cat([self.cls_embedding(labels_B), image_BND], dim=1)  # T = n + 1
        rope_TP2 = self.freqs_cis[: h_BTD.shape[1]]
        for layer in self.layers:
            h_BTD = layer(h_BTD, rope_TP2)  # causal attention over the whole sequence
        logits_BTV = self.output(self.norm(h_BTD)).float()
        embeddings_BTC = self.embedding_out(self.embedding_norm(h_BTD)).float()
        return logits_BTV, embeddings_BTC
