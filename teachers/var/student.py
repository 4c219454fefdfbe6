"""The DD student's VAR backbone, built from the teacher's own modules (DD paper App. B).

Sequence ``[start, x_1 .. x_n]`` (n + 1 positions; the position table grows by one row, the
start's, copied from the teacher's first). ``x_i`` is the continuous Cvae-dim input of token
``i`` (noise or its codebook vector, Eq. 5), embedded by a copy of the teacher's
``word_embed``. Token ``i`` sees the start token, every token of earlier scales and itself:
its own noise decides it given the earlier scales (Alg. 1), the other noise tokens of its
scale do not. The noise/data flag enters every block (one zero-initialised ``Embedding(2, C)``
per block, added to the block's input), so at initialisation the start position computes the
teacher's scale-0 logits exactly.

Heads: logits from copies of the teacher's ``head_nm`` and ``head``; the Cvae-dim embedding
from a new AdaLN head (a copy of ``head_nm``) and a new ``Linear(C -> Cvae)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from teachers.protocol import head_positions
from teachers.var.model import VAR, level_ids

NUM_FLAGS = 2  # 0 = noise, 1 = data


def student_attention_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Additive mask ``[1, 1, n+1, n+1]``: the start sees itself; token ``i`` sees the start,
    the tokens of earlier scales and itself."""
    level_N = level_ids(patch_nums)
    n = level_N.numel()
    sees = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    sees[:, 0] = True
    sees[1:, 1:] = level_N[:, None] > level_N[None, :]
    sees.diagonal().fill_(True)
    return torch.where(sees, 0.0, float("-inf")).reshape(1, 1, n + 1, n + 1)


class VARStudentBackbone(nn.Module):
    """The student trunk and heads (the call contract: ``Teacher.student_backbone``)."""

    def __init__(self, var: VAR) -> None:
        super().__init__()
        config = var.config
        if config.first_l != 1:
            raise ValueError(f"the DD student needs patch_nums[0] = 1, got {config.patch_nums}")
        self.num_tokens, self.code_dim = config.num_tokens, config.cvae
        self.class_emb = copy.deepcopy(var.class_emb)
        self.pos_start = nn.Parameter(var.pos_start.detach().clone())
        # Row 0: the start's position (the teacher's first); rows 1..n: the tokens'.
        self.pos_1TC = nn.Parameter(torch.cat([var.pos_1LC[:, :1], var.pos_1LC], dim=1).detach())
        self.lvl_embed = copy.deepcopy(var.lvl_embed)
        self.word_embed = copy.deepcopy(var.word_embed)
        self.shared_ada_lin = copy.deepcopy(var.shared_ada_lin)
        self.blocks = copy.deepcopy(var.blocks)
        self.flag_embeddings = nn.ModuleList(
            nn.Embedding(NUM_FLAGS, config.embed_dim) for _ in range(config.depth)
        )
        for flag in self.flag_embeddings:
            nn.init.zeros_(flag.weight)
        self.head_nm = copy.deepcopy(var.head_nm)
        self.head = copy.deepcopy(var.head)
        self.embedding_head_nm = copy.deepcopy(var.head_nm)
        self.embedding_out = nn.Linear(config.embed_dim, config.cvae)
        level_T = torch.cat([torch.zeros(1, dtype=torch.long), level_ids(config.patch_nums)])
        self.register_buffer("level_1T", level_T.view(1, -1), persistent=False)
        self.register_buffer(
            "attn_bias", student_attention_bias(config.patch_nums), persistent=False
        )
        self.requires_grad_(True)
        self.train()

    def forward(
        self,
        labels_B: torch.Tensor,
        inputs_BNC: torch.Tensor,
        is_data_BN: torch.Tensor,
        *,
        logits_positions: range | None = None,
        embedding_positions: range | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads at all ``n + 1`` positions, or each at its ``range`` only (the contract:
        ``Teacher.student_backbone``)."""
        at_logits = head_positions(logits_positions, self.num_tokens + 1)
        at_embeddings = head_positions(embedding_positions, self.num_tokens + 1)
        cond_BD = self.class_emb(labels_B)
        start_B1C = cond_BD.unsqueeze(1) + self.pos_start
        x_BTC = torch.cat([start_B1C, self.word_embed(inputs_BNC.float())], dim=1)
        x_BTC = x_BTC + self.lvl_embed(self.level_1T) + self.pos_1TC
        # The start position counts as data (it is given).
        flags_BT = torch.cat([torch.ones_like(is_data_BN[:, :1]), is_data_BN], dim=1).long()
        cond = self.shared_ada_lin(cond_BD)
        bias = self.attn_bias.to(x_BTC.dtype)
        for block, flag in zip(self.blocks, self.flag_embeddings, strict=True):
            x_BTC = block(x_BTC + flag(flags_BT), cond, bias)
        h_BTC = x_BTC.float()
        # The AdaLN heads act position by position: a slice's outputs are the full outputs'.
        logits_BTV = self.head(self.head_nm(h_BTC[:, at_logits], cond_BD)).float()
        embedding_input_BTC = self.embedding_head_nm(h_BTC[:, at_embeddings], cond_BD)
        embeddings_BTC = self.embedding_out(embedding_input_BTC).float()
        return logits_BTV, embeddings_BTC
