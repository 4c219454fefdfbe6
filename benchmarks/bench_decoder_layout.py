"""The tiny teachers' decoders fed channels-last code maps against contiguous NCHW ones.

    python3 benchmarks/bench_decoder_layout.py --threads 1 --repeats 15

Code maps built from looked-up tokens ``[B, n, C]`` are transposed views, channels-last in
memory, and convolutions keep the layout they are given. The official LlamaGen
``get_codebook_entry`` returns them contiguous and so does our ``VQModel.decode_code`` (since
22f56ff); the training path (``LlamaGenTeacher.decode_embeddings``, the perceptual loss) and
VAR's ``f_hat`` (a sum of per-scale maps in ``embed_to_fhat``) pass the layout on. This times,
alternately in one run (``dd.evaluate.alternated_seconds``), the same decoder on the same
values in both layouts: decoding at the evaluation batch (no grad: sampling), and a forward
and backward at the training batch (the perceptual loss' path). Medians in ms per batch.

A third row per teacher keeps the channels-last view but runs every ``GroupNorm`` of the decoder
on a contiguous copy, its output turned back to the input's layout (forward hooks, only for that
call): PyTorch's CPU ``GroupNorm`` kernel is several times slower on channels-last input, while
channels-last convolutions are faster, so this row shows what the mixed layout would save.
Each teacher's rows end with the largest difference between the mixed row's images and the
channels-last ones, and the share of the channels-last decode spent in ``native_group_norm``
(``torch.profiler``). Then the two kernels alone, alternated, in both layouts: ``GroupNorm``
(8 groups) and a 32-to-32 3x3 convolution at the decoders' shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
from collections.abc import Iterator

import torch
from common import machine_description

from dd.evaluate import alternated_seconds
from teachers.tiny import load_tiny_teacher


def code_map_BChw(teacher, tokens_BN: torch.Tensor) -> torch.Tensor:
    """The decoder's input of ``tokens_BN`` as the training path builds it: a permuted
    (LlamaGen) or summed (VAR) view that is channels-last in memory."""
    if hasattr(teacher, "vae"):  # VAR: f_hat of the multi-scale embeddings
        return teacher.vae.embeddings_to_fhat(teacher.codebook[tokens_BN])
    height, width = teacher.geometry.image_grid
    codes_BNC = teacher.codebook[tokens_BN]
    return codes_BNC.reshape(-1, height, width, teacher.code_dim).permute(0, 3, 1, 2)


def decoder_of(teacher):
    """Code map -> image, the module every decode path ends in."""
    return teacher.vae.fhat_to_unclamped_img if hasattr(teacher, "vae") else teacher.vq.decode


@contextlib.contextmanager
def contiguous_group_norms(module: torch.nn.Module) -> Iterator[None]:
    """Every ``GroupNorm`` under ``module`` normalises a contiguous copy of its input and hands
    its output back in the input's memory format (channels-last in, channels-last out)."""
    handles = []
    layouts: list[bool] = []

    def before(_norm, args):
        (x,) = args
        layouts.append(x.dim() == 4 and not x.is_contiguous())
        return (x.contiguous(),)

    def after(_norm, _args, output):
        return output.contiguous(memory_format=torch.channels_last) if layouts.pop() else output

    for norm in module.modules():
        if isinstance(norm, torch.nn.GroupNorm):
            handles.append(norm.register_forward_pre_hook(before))
            handles.append(norm.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layout_rows(
    name: str, eval_batch: int, train_batch: int, repeats: int
) -> tuple[list[str], list[str]]:
    """Table rows of teacher ``name`` (every layout, decoding and the training pass) and its
    notes (the images' difference, the GroupNorm share)."""
    teacher = load_tiny_teacher(name)
    decode = decoder_of(teacher)
    generator = torch.Generator().manual_seed(0)
    shape = (eval_batch, teacher.geometry.num_tokens)
    tokens_BN = torch.randint(teacher.vocab_size, shape, generator=generator)
    with torch.no_grad():
        maps = {"channels-last view": code_map_BChw(teacher, tokens_BN)}
    maps["contiguous NCHW"] = maps["channels-last view"].contiguous()

    mixed = "channels-last view, contiguous GroupNorm"
    norms = {layout: contextlib.nullcontext for layout in maps}
    maps[mixed] = maps["channels-last view"]
    norms[mixed] = functools.partial(contiguous_group_norms, teacher)

    def sampling(source: torch.Tensor, layout: str):
        def call():
            with torch.no_grad(), norms[layout]():
                decode(source)

        return call

    def training(source: torch.Tensor, layout: str):
        def call():
            leaf = source.detach().requires_grad_(True)  # detach keeps the strides
            with norms[layout]():
                decode(leaf).square().mean().backward()

        return call

    calls = {}
    for layout, source in maps.items():
        calls[("decode", layout)] = sampling(source, layout)
        calls[("train", layout)] = training(source[:train_batch], layout)
    seconds = alternated_seconds(calls, repeats)
    rows = []
    for layout, source in maps.items():
        decode_ms = 1000 * statistics.median(seconds[("decode", layout)])
        train_ms = 1000 * statistics.median(seconds[("train", layout)])
        stride = tuple(source.stride())
        rows.append(f"| {name} | {layout} {stride} | {decode_ms:.1f} | {train_ms:.1f} |")
    with torch.no_grad():
        plain = decode(maps["channels-last view"])
        with norms[mixed]():
            difference = (decode(maps[mixed]) - plain).abs().max().item()
    share = norm_share(sampling(maps["channels-last view"], "channels-last view"))
    notes = [
        f"- {name}: mixed against channels-last images, max |difference| {difference:.1e}",
        f"- {name}: native_group_norm share of the channels-last decode {share:.0%}",
    ]
    return rows, notes


def norm_share(call) -> float:
    """The share of ``call``'s CPU time (self time of every op) in ``native_group_norm``."""
    from torch.profiler import ProfilerActivity, profile

    call()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key == "aten::native_group_norm") / total


def kernel_rows(batch: int, repeats: int) -> list[str]:
    """``GroupNorm`` and a 3x3 convolution alone, channels-last against contiguous input."""
    generator = torch.Generator().manual_seed(0)
    calls, shapes = {}, {}
    for channels in (16, 32):
        x = torch.randn(batch, channels, 16, 16, generator=generator)
        norm = torch.nn.GroupNorm(8, channels)
        for layout, source in (
            ("contiguous", x),
            ("channels-last", x.to(memory_format=torch.channels_last)),
        ):
            calls[(f"GroupNorm [{batch}, {channels}, 16, 16]", layout)] = functools.partial(
                norm, source
            )
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(batch, 32, 16, 16, generator=generator)
    conv_last = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    conv_last.load_state_dict(conv.state_dict())
    calls[(f"conv 3x3 32->32 [{batch}, 32, 16, 16]", "contiguous")] = functools.partial(conv, x)
    calls[(f"conv 3x3 32->32 [{batch}, 32, 16, 16]", "channels-last")] = functools.partial(
        conv_last, x.to(memory_format=torch.channels_last)
    )
    with torch.no_grad():
        seconds = alternated_seconds(calls, repeats)
    for (kernel, layout), values in seconds.items():
        shapes.setdefault(kernel, {})[layout] = 1000 * statistics.median(values)
    return [
        f"| {kernel} | {ms['channels-last']:.2f} | {ms['contiguous']:.2f} |"
        for kernel, ms in shapes.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["llamagen-digits", "var-digits"])
    parser.add_argument("--eval-batch", type=int, default=250, help="the demo's eval batch")
    parser.add_argument("--train-batch", type=int, default=64, help="llamagen-digits' batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description(args.threads)}, float32, CPU")
    print(
        f"| teacher | input (strides) | decode, batch {args.eval_batch} (ms) | forward + "
        f"backward, batch {args.train_batch} (ms) |"
    )
    print("|---|---|---|---|")
    notes = []
    for name in args.teachers:
        rows, teacher_notes = layout_rows(name, args.eval_batch, args.train_batch, args.repeats)
        print("\n".join(rows))
        notes += teacher_notes
    print()
    print("\n".join(notes))
    print()
    print("| kernel | channels-last (ms) | contiguous (ms) |")
    print("|---|---|---|")
    for row in kernel_rows(args.eval_batch, args.repeats):
        print(row)


if __name__ == "__main__":
    main()
