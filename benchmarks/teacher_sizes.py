"""Parameter counts of the tiny teachers (the presets the shipped weights load into), and of the
llamagen-digits decoder shapes it had before the refit.

    PYTHONPATH=. python3 benchmarks/teacher_sizes.py

Prints, for docs/embedded_default.md: the AR model and tokenizer of ``llamagen-digits`` and
``var-digits`` (``teachers.tiny.presets``), and the llamagen-digits tokenizer and its decoder
module in three shapes: the shipped one (ch 8, one res block a level, no attention), the same
with the decoder's attention, and the encoder-shaped decoder the teacher was first trained with.
No weights are read: the counts depend on the shapes alone.
"""

from __future__ import annotations

import argparse
import dataclasses

from torch import nn

from teachers.llamagen import GPT, VQModel
from teachers.tiny.presets import llamagen_tiny_configs, var_tiny_configs
from teachers.var import VAR, VQVAE


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    gpt_config, vq_config = llamagen_tiny_configs()
    var_config, vae_config = var_tiny_configs()
    print("| teacher | AR model | tokenizer |")
    print("|---|---|---|")
    for name, model, tokenizer in (
        ("llamagen-digits", GPT(gpt_config), VQModel(vq_config)),
        ("var-digits", VAR(var_config), VQVAE(vae_config)),
    ):
        print(f"| {name} | {parameters(model):,} | {parameters(tokenizer):,} |")
    shapes = (
        ("shipped: ch 8, one res block a level, no attention", vq_config),
        (
            "the same with the decoder's attention",
            dataclasses.replace(vq_config, decoder_attention=True),
        ),
        (
            "encoder-shaped (ch 16, the encoder's res blocks, attention)",
            dataclasses.replace(
                vq_config, decoder_ch=None, decoder_num_res_blocks=None, decoder_attention=True
            ),
        ),
    )
    print("\n| llamagen-digits decoder | tokenizer | decoder module |")
    print("|---|---|---|")
    for name, config in shapes:
        vq = VQModel(config)
        print(f"| {name} | {parameters(vq):,} | {parameters(vq.decoder):,} |")


if __name__ == "__main__":
    main()
