"""The DD student's LlamaGen backbone, built from the teacher's own modules (DD paper App. B).

Sequence ``[class, x_1 .. x_n]`` (n + 1 positions, the teacher's full RoPE table), plain causal
mask. ``x_i`` is a continuous C-dim input: noise or a codebook vector (Eq. 5), projected by a
new ``Linear(C -> dim)``; a learned noise/data flag ``Embedding(2, dim)`` is added to every
image position. The output at position ``i`` (1..n) sees ``x_1 .. x_i`` and predicts token
``i``: the noise ``x_i`` is what decides token ``i`` given the prefix (Alg. 1), so it must be
seen. Position 0 (the class) sees only the class: its logits are the teacher's first-token
logits at initialisation.

Heads: the C-dim embedding from a copy of ``norm`` and a new ``Linear(dim -> C)`` at position
``i``. Logits of token ``i``: the copies of the teacher's ``norm`` and ``output`` read at position
``i - 1``, plus ``<u_i, c_j>`` for every code ``c_j``, with ``u_i`` a new zero-initialised
``Linear(dim -> C)`` of position ``i``. Position ``i - 1`` holds the teacher's own computation
of token ``i``'s distribution (it sees the class and ``x_1 .. x_{i-1}``, the teacher's inputs
for that token), so at initialisation token 1's logits are the teacher's and later tokens
start from the teacher's next-token head; the own-position term adds what token ``i``'s own
noise decides, in the form of Eq. 3's posterior (``log p_j + a <x, c_j>``; ``DDStudent``'s
noise-logit prior is its fixed-direction case). Through the codebook it costs ``dim * C + C * V``
per token, not a second ``dim * V`` head (LlamaGen-B: 12.6M multiply-adds a token, 13% of its
forward). The paper reads the logits at position ``i``; the teacher-aligned readout is our
deviation: on llamagen-digits it reached in 800 steps the FID the paper's readout reached in
about 3,000, but a 4,000-step run did not beat the shipped 18,500-step paper-readout student
(docs/distillation.md, "Teacher-aligned readout and the teacher-KL term"). ``input_proj``
starts as the least-squares map from the codebook vectors to the teacher's token embeddings,
so data inputs (the prefix of a later step) enter near where the teacher's own tokens do.

Every reused module is a trainable deep copy; the teacher stays frozen.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from teachers.llamagen.gpt import GPT
from teachers.protocol import add_code_scores_, head_positions

NUM_FLAGS = 2  # 0 = noise, 1 = data


class LlamaGenStudentBackbone(nn.Module):
    """The student trunk and heads (the call contract: ``Teacher.student_backbone``)."""

    def __init__(
        self, gpt: GPT, codebook_VC: torch.Tensor, *, teacher_aligned: bool = True
    ) -> None:
        """``teacher_aligned=False``: the paper's student (logits at the token's own position,
        a randomly initialised ``input_proj``), as the students trained before the aligned
        readout were built (their cards say so: ``backbone_options``)."""
        super().__init__()
        self.teacher_aligned = teacher_aligned
        config = gpt.config
        if config.cls_token_num != 1:
            raise ValueError(f"the DD student needs cls_token_num 1, got {config.cls_token_num}")
        code_dim = codebook_VC.shape[1]
        self.num_tokens, self.code_dim = config.block_size, code_dim
        self.cls_embedding = copy.deepcopy(gpt.cls_embedding)
        self.layers = copy.deepcopy(gpt.layers)
        self.norm = copy.deepcopy(gpt.norm)
        self.output = copy.deepcopy(gpt.output)
        self.input_proj = nn.Linear(code_dim, config.dim)
        if teacher_aligned:
            init_as_least_squares(self.input_proj, codebook_VC, gpt.tok_embeddings.weight)
        # Zero-initialised: at initialisation the trunk computes exactly the teacher's function.
        self.flag_embedding = nn.Embedding(NUM_FLAGS, config.dim)
        nn.init.zeros_(self.flag_embedding.weight)
        self.embedding_norm = copy.deepcopy(gpt.norm)
        self.embedding_out = nn.Linear(config.dim, code_dim)
        if teacher_aligned:  # token i's own-position term <u_i, c_j> (zero: the teacher's)
            self.own_position_code = nn.Linear(config.dim, code_dim, bias=False)
            nn.init.zeros_(self.own_position_code.weight)
            self.register_buffer("codebook_VC", codebook_VC.detach().clone(), persistent=False)
        self.register_buffer("freqs_cis", gpt.build_freqs_cis().clone(), persistent=False)
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
        image_BND = self.input_proj(inputs_BNC) + self.flag_embedding(is_data_BN.long())
        h_BTD = torch.cat([self.cls_embedding(labels_B), image_BND], dim=1)  # T = n + 1
        rope_TP2 = self.freqs_cis[: h_BTD.shape[1]]
        for layer in self.layers:
            h_BTD = layer(h_BTD, rope_TP2)  # causal attention over the whole sequence
        normed_BTD = self.norm(h_BTD)
        if not self.teacher_aligned:  # position i: the teacher's head for token i + 1
            logits_BTV = self.output(normed_BTD[:, at_logits]).float()
        else:  # position i >= 1 reads the head at i - 1 (shifted before the head: D << V)
            shifted_BTD = torch.cat([normed_BTD[:, :1], normed_BTD[:, :-1]], dim=1)
            logits_BTV = self.output(shifted_BTD[:, at_logits]).float()
            # The own-position term of positions >= 1 (position 0 has no input of its own).
            first_own = max(at_logits.start, 1)
            own_BNC = self.own_position_code(normed_BTD[:, first_own : at_logits.stop])
            own_logits_BNV = logits_BTV[:, first_own - at_logits.start :]
            add_code_scores_(own_logits_BNV, own_BNC, self.codebook_VC)
        embeddings_BTC = self.embedding_out(self.embedding_norm(h_BTD[:, at_embeddings])).float()
        return logits_BTV, embeddings_BTC


@torch.no_grad()
def init_as_least_squares(
    layer: nn.Linear, inputs_VC: torch.Tensor, targets_VD: torch.Tensor
) -> None:
    """Set ``layer`` (``C -> D``, with bias) to the least-squares fit of ``inputs -> targets``."""
    ones_V1 = inputs_VC.new_ones(inputs_VC.shape[0], 1)
    design_VK = torch.cat([inputs_VC, ones_V1], dim=1).double()
    solution_KD = torch.linalg.lstsq(design_VK, targets_VD.double()).solution
    layer.weight.copy_(solution_KD[:-1].T.to(layer.weight.dtype))
    layer.bias.copy_(solution_KD[-1].to(layer.bias.dtype))
