"""Sample-quality metrics from features and class logits, whatever network made them.

- FID (Heusel et al. 2017): Frechet distance of Gaussians fitted to two feature sets, or to one
  set and precomputed statistics (``mu``, ``sigma``: the ADM suite's ``.npz`` reference files);
- IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` over ``splits`` disjoint splits;
- improved precision and recall (Kynkaenniemi et al. 2019, the ADM suite's definition): a
  sample is "inside" a set when it lies within the distance of some member to that member's
  ``k``-th nearest neighbour in the set (k = 3).

Features come from ``dd.metrics.spaces`` (Inception for real teachers, the digits classifier for
the tiny ones). Everything is computed in float64.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch

PR_NEIGHBOURS = 3  # k of Kynkaenniemi et al. / the ADM evaluator
IS_SPLITS = 10  # the usual Inception Score protocol
IS_SHUFFLE_SEED = 2020  # torch-fidelity's (isc_features_to_metric's rng_seed)
DISTANCE_CHUNK = 1024  # rows of a pairwise-distance block (memory: chunk x N floats)


class TooFewFeatures(ValueError):
    """Fewer than two feature rows: no covariance (its own class, so that ``dd eval`` can say
    it is the reference's images that are too few)."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``[D]`` and covariance ``[D, D]`` of a feature set (the ADM ``.npz`` fields)."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStats:
        if features.dim() != 2 or features.shape[0] < 2:
            raise TooFewFeatures(f"need features [N >= 2, D], got {tuple(features.shape)}")
        x = features.double().cpu().numpy()
        return cls(x.mean(0), np.cov(x, rowvar=False))


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``; the trace of the square root
    from the eigenvalues of ``S_a S_b`` (real and >= 0 up to rounding), as torchmetrics does."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    eigenvalues = np.linalg.eigvals(a.sigma @ b.sigma)
    sqrt_trace = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * sqrt_trace)


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> float:
    """Mean over ``splits`` of ``exp(mean_x KL(p(y|x) || p(y)))`` from class logits ``[N, K]``;
    exactly ``splits`` parts, their sizes differing by at most one (``np.array_split``;
    ``chunk`` would make fewer, uneven parts when ``splits`` does not divide ``N``).

    With more than one split the rows are first shuffled by torch-fidelity's permutation
    (``np.random.RandomState(2020)``; torchmetrics shuffles too): ``dd eval`` generates its
    samples class by class, and consecutive rows made each split a few classes, which capped
    every split's score (var-digits: 1.06 with 10 splits against 9.88 with one). torch-fidelity
    cuts at ``i * N // splits``: the same parts when ``splits`` divides ``N``."""
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"IS splits must be an integer >= 1, got {splits!r}")
    if logits.shape[0] < splits:
        raise ValueError(f"{logits.shape[0]} samples cannot make {splits} IS splits")
    if splits > 1:
        order = np.random.RandomState(IS_SHUFFLE_SEED).permutation(logits.shape[0])
        logits = logits[torch.from_numpy(order)]
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = part.exp().mean(0).log()
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))


def _kth_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every row to its ``k``-th nearest other row."""
    radii = []
    for rows in features.split(DISTANCE_CHUNK):
        distances = torch.cdist(rows, features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # +1: the row itself (0)
    return torch.cat(radii)


def _inside(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For every query: does some support point lie within its own radius of the query?"""
    inside = []
    for rows in queries.split(DISTANCE_CHUNK):
        inside.append((torch.cdist(rows, support) <= radii[None]).any(dim=1))
    return torch.cat(inside)


def precision_recall(
    real: torch.Tensor, generated: torch.Tensor, k: int = PR_NEIGHBOURS
) -> tuple[float, float]:
    """(precision, recall): the fraction of generated samples inside the real manifold, and of
    real samples inside the generated one."""
    if min(real.shape[0], generated.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    real, generated = real.double().cpu(), generated.double().cpu()
    precision = _inside(generated, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _inside(real, generated, _kth_neighbour_radii(generated, k)).double().mean()
    return float(precision), float(recall)


NPZ_FORMAT = (
    "an ADM reference batch: an .npz (zip) archive with mu [D] and sigma [D, D], and "
    "optionally arr_0 images [N, H, W, 3] uint8 for precision/recall"
)
# sigma is a covariance: symmetric up to the rounding of whoever computed it (float32 stores
# ~1e-7 relative); a larger asymmetry is another array saved under that name.
SIGMA_SYMMETRY_RTOL = 1e-6


def _read_npz_arrays(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``keys`` of the ``.npz`` at ``path`` as float64, or one ``ValueError`` naming the file
    and ``NPZ_FORMAT``: an ``.npy`` under an ``.npz`` name, a truncated download or an HTML
    page gave a TypeError or BadZipFile traceback, or numpy's advice to load the file with
    ``allow_pickle`` (never to be taken for a downloaded file)."""
    with open(path, "rb") as handle:  # a missing file stays a FileNotFoundError
        if not zipfile.is_zipfile(handle):
            raise ValueError(f"{path} is not an .npz (zip) archive; expected {NPZ_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            arrays = {key: data[key].astype(np.float64) for key in keys if key in names}
    # object arrays (numpy: "... when allow_pickle=False"), corrupt members, bad CRCs, text
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, TypeError) as error:
        raise ValueError(
            f"{path}: {'/'.join(keys)} could not be read as float arrays "
            f"({type(error).__name__}); expected {NPZ_FORMAT}"
        ) from None
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{path}: no {missing} arrays (has {names}); expected {NPZ_FORMAT}")
    return arrays


def load_stats_npz(path: str, feature_dim: int | None = None) -> FeatureStats:
    """``mu`` and ``sigma`` from an ``.npz`` (the ADM reference batches' format), checked when
    read (``dd eval`` reads it before generating anything): a zip archive of ``.npy`` arrays,
    ``mu [D]``, ``sigma [D, D]`` symmetric (to ``SIGMA_SYMMETRY_RTOL`` of its largest value),
    finite, and ``D == feature_dim`` when given (2048 for Inception's pool features)."""
    arrays = _read_npz_arrays(path, ("mu", "sigma"))
    mu, sigma = arrays["mu"], arrays["sigma"]
    size = mu.shape[0] if mu.ndim == 1 else None
    if size is None or sigma.shape != (size, size):
        raise ValueError(
            f"{path}: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}"
        )
    if feature_dim is not None and size != feature_dim:
        raise ValueError(f"{path}: statistics of {size}-d features; this space has {feature_dim}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma holds NaN or infinite values")
    asymmetry = float(np.abs(sigma - sigma.T).max()) if size else 0.0
    scale = float(np.abs(sigma).max()) if size else 0.0
    if asymmetry > SIGMA_SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{path}: sigma is not symmetric (max |sigma - sigma.T| = {asymmetry:.3g}, above "
            f"{SIGMA_SYMMETRY_RTOL:g} x max |sigma| = {scale:.3g}): not a covariance"
        )
    return FeatureStats(mu, sigma)
