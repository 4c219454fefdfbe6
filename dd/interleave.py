"""Teacher-interleaved sampling ranges (paper Alg. 4, Table 2) and their named presets.

The paper writes ``pre-trained-n-m`` for: after DD step 1, the teacher re-generates AR steps
``n .. m-1`` (1-indexed) of the sequence, then DD step 2 runs from step ``m``. Here a range is
0-based and half-open, ``(first, second) = (n - 1, m - 1)``: the teacher regenerates AR steps
``[first, second)``, and ``second`` must be a trained timestep after the first one.

Cost in model calls (the paper's "#Step" column): ``second - first`` teacher steps, DD step 2,
and DD step 1 unless ``first == 0`` (then every token it made is regenerated, so it is skipped):
VAR pre-trained-1-6 = 6, 4-6 = 4, 5-6 = 3; LlamaGen 1-81 = 81, 41-81 = 42, 61-81 = 22. A
teacher step is one trunk forward: the sessions run the kept prefix ``[0, first)`` lazily, in
the forward of the first regenerated step (``tests/test_sampling.py`` counts the passes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PRESET_PATTERN = re.compile(r"pre-trained-(\d+)-(\d+)")

# Named presets per teacher: the paper's Table 2 settings, and the analogous ranges for the
# tiny teachers (the same fractions of the 2nd timestep: all of it, its later half / last
# steps). Tiny timesteps come from recipes/distill_tiny_*.yaml: LlamaGen (0, 20), VAR (0, 3),
# FAR (0, 8).
INTERLEAVE_PRESETS: dict[str, tuple[str, ...]] = {
    "var-d16": ("pre-trained-1-6", "pre-trained-4-6", "pre-trained-5-6"),  # timesteps (0, 5)
    "llamagen": ("pre-trained-1-81", "pre-trained-41-81", "pre-trained-61-81"),  # (0, 80)
    "llamagen-digits": ("pre-trained-1-21", "pre-trained-11-21", "pre-trained-16-21"),
    "var-digits": ("pre-trained-1-4", "pre-trained-2-4", "pre-trained-3-4"),
    "far-digits": ("pre-trained-1-9", "pre-trained-5-9", "pre-trained-7-9"),
}


def parse_interleave(interleave: str | Sequence[int]) -> tuple[int, int]:
    """``"pre-trained-n-m"`` (the paper's 1-indexed name) or a 0-based ``(first, second)``."""
    if isinstance(interleave, str):
        match = PRESET_PATTERN.fullmatch(interleave)
        if match is None:
            raise ValueError(
                f"interleave {interleave!r}: give 'pre-trained-n-m' (the paper's notation, "
                f"1-indexed: the teacher regenerates AR steps n..m-1) or a 0-based "
                f"(first, second); presets: {INTERLEAVE_PRESETS}"
            )
        return int(match[1]) - 1, int(match[2]) - 1
    values = tuple(interleave)
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"interleave {interleave!r}: give two integers (first, second)")
    return values[0], values[1]


def preset_name(first: int, second: int) -> str:
    """The paper's name of a 0-based range."""
    return f"pre-trained-{first + 1}-{second + 1}"


def check_interleave(
    interleave: str | Sequence[int], timesteps: Sequence[int], num_steps: int
) -> tuple[int, int]:
    """``(first, second)`` checked against the student's trained ``timesteps`` and the
    teacher's ``num_steps`` AR steps: ``0 <= first < second`` and ``second`` one of the trained
    timesteps after the first. An empty range (``first >= second``, both in the sequence) has
    its own message."""
    first, second = parse_interleave(interleave)
    later = list(timesteps[1:])
    if 0 <= first < num_steps and 0 <= second < num_steps and first >= second:
        raise ValueError(
            f"interleave {interleave!r} = AR steps [{first}, {second}) is an empty range: the "
            "teacher would regenerate no AR step; give first < second (DD alone: give steps "
            "instead of interleave)"
        )
    if not 0 <= first < second < num_steps:
        raise ValueError(
            f"interleave {interleave!r} = AR steps [{first}, {second}) lies outside the "
            f"sequence: the teacher has AR steps 0..{num_steps - 1}, and the range needs "
            "0 <= first < second < that count"
        )
    if second not in later:
        raise ValueError(
            f"interleave {interleave!r}: DD step 2 must start at a trained timestep after the "
            f"first, {later}, not at AR step {second} (the student was trained for timesteps "
            f"{list(timesteps)})"
        )
    return first, second


def interleave_model_calls(first: int, second: int) -> int:
    """Model calls of Alg. 4 over ``[first, second)`` (see the module docstring)."""
    return (second - first) + 1 + (1 if first > 0 else 0)
