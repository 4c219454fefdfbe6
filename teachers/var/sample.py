"""Plain VAR sampling: tokens through the teacher's session, images through the VQVAE.

A pure function of (teacher, labels, settings, generator), like the official
``autoregressive_infer_cfg`` (which seeds a generator from ``g_seed``): pass
``torch.Generator().manual_seed(seed)`` for reproducible draws.
"""

from __future__ import annotations

import torch

from teachers.protocol import SamplingConfig
from teachers.sampling import sample_from_log_probs
from teachers.var.teacher import VARTeacher


@torch.no_grad()
def sample_images(
    teacher: VARTeacher,
    labels: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (tokens ``[B, n]``, images ``[B, 3, H, W]`` in ``[0, 1]``).

    ``greedy`` takes the most likely code of every token (the official ``top_k=1``).
    """
    chosen = []
    with teacher.start(labels, sampling or teacher.default_sampling()) as session:
        for _ in range(teacher.geometry.num_steps):
            log_probs = session.next_log_probs()
            tokens = log_probs.argmax(-1) if greedy else sample_from_log_probs(log_probs, generator)
            session.accept(tokens)
            chosen.append(tokens)
        images = session.image()
    return torch.cat(chosen, dim=1), images
