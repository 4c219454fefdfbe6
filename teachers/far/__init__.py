"""FAR (Fast AutoRegressive, FAR paper Sec. 3.3): continuous-token AR generation with a
shortcut head, as FAR-Causal; the teacher behind ``teachers.protocol.ContinuousTeacher``.

No FAR code is public: this is an independent implementation from the paper and the shortcut
models' description. ``teachers.tiny.load_tiny_teacher("far-digits")`` is the shipped tiny one.
"""

from teachers.far.autoencoder import Autoencoder
from teachers.far.config import (
    AUTOENCODER_PRESETS,
    FAR_PRESETS,
    AutoencoderConfig,
    FARConfig,
    ShortcutSettings,
    autoencoder_preset,
    far_preset,
)
from teachers.far.loading import load_far_teacher
from teachers.far.model import FARCausal, FARHead
from teachers.far.sampling import (
    DEFAULT_FAR_SAMPLING,
    SAMPLING_PRESETS,
    map_noise,
    sample_continuous_tokens,
    sample_head,
)
from teachers.far.teacher import FARTeacher

__all__ = [
    "AUTOENCODER_PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "DEFAULT_FAR_SAMPLING",
    "FAR_PRESETS",
    "FARCausal",
    "FARConfig",
    "FARHead",
    "FARTeacher",
    "SAMPLING_PRESETS",
    "ShortcutSettings",
    "autoencoder_preset",
    "far_preset",
    "load_far_teacher",
    "map_noise",
    "sample_continuous_tokens",
    "sample_head",
]
