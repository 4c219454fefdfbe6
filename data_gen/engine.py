"""Pair generation on Lightning: a predict loop over global indices and a shard-writing callback.

- ``PairDataModule``: rank 0 prepares the folder (verifies finished shards, lists the missing
  ones) and broadcasts the list; rank r takes pending shards ``r, r + W, ...`` and yields
  batches of consecutive global indices that never cross a shard boundary. Each index becomes
  (index, label, noise) through ``data_gen.pairs.draw_sample``: no rank, batch or restart
  changes a sample.
- ``PairGenerator``: the LightningModule; ``predict_step`` is ``map_noise`` (paper Alg. 1).
- ``ShardWriter``: a ``BasePredictionWriter`` that streams each rank's records into its open
  shard and publishes it when the shard's last record arrives.
- ``run_generation``: recipe -> Trainer.predict -> complete manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from data_gen.config import FlowSettings, GenerateRecipe, PairSettings
from data_gen.pairs import (
    CONTINUOUS_TOKENS_DTYPE,
    NOISE_DTYPES,
    draw_sample,
    is_continuous,
    map_noise,
    map_noise_continuous,
    token_dtype,
)
from data_gen.shards import (
    FORMAT_VERSION,
    FolderLock,
    OpenShard,
    RunIdentity,
    ShardError,
    ShardRange,
    check_folder,
    encode_record,
    finalize_if_complete,
    hash_finished,
    manifest_base,
    open_manifest,
    plan_shards,
    scan_folder,
)
from dd.compute import LIGHTNING_PYTREE_WARNING, run_section_refusal
from dd.config import recipe_to_dict
from dd.teacher_spec import load_teacher
from teachers.protocol import SamplingConfig, Teacher

log = logging.getLogger(__name__)


def run_identity(teacher: Teacher, recipe: GenerateRecipe) -> RunIdentity:
    """The teacher fingerprint and every setting a record depends on."""
    sampling = recipe.sampling.resolve(teacher.default_sampling())
    if is_continuous(teacher):  # no codebook: float tokens [n, C] (docs/far.md)
        # No AR flow matching either: the noise is the teacher's own head input (FAR's shortcut
        # head maps it), so flow settings would be recorded and change nothing.
        default = FlowSettings()
        changed = [
            f.name
            for f in dataclasses.fields(default)
            if getattr(recipe.flow, f.name) != getattr(default, f.name)
        ]
        if changed:
            raise ValueError(
                f"flow: {changed} do not apply to a continuous-token teacher (its head maps the "
                "noise itself, no flow matching onto a codebook); drop them"
            )
        return RunIdentity(
            teacher.fingerprint(),
            teacher.family,
            {
                "record_format": FORMAT_VERSION,
                "sampling": dataclasses.asdict(sampling),
                "pairs": dataclasses.asdict(recipe.pairs),
                "shard_size": recipe.output.shard_size,
                "num_tokens": teacher.geometry.num_tokens,
                "code_dim": int(teacher.token_dim),
                "vocab_size": None,
                "num_classes": teacher.num_classes,
                "tokens_dtype": str(CONTINUOUS_TOKENS_DTYPE).removeprefix("torch."),
            },
        )
    vocab_size, code_dim = teacher.codebook.shape
    settings = {
        "record_format": FORMAT_VERSION,
        "sampling": dataclasses.asdict(sampling),
        "flow": dataclasses.asdict(recipe.flow),
        "pairs": dataclasses.asdict(recipe.pairs),
        "shard_size": recipe.output.shard_size,
        "num_tokens": teacher.geometry.num_tokens,
        "code_dim": int(code_dim),
        "vocab_size": int(vocab_size),
        "num_classes": teacher.num_classes,
        "tokens_dtype": str(token_dtype(int(vocab_size))).removeprefix("torch."),
    }
    return RunIdentity(teacher.fingerprint(), teacher.family, settings)


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (Lightning's strategies gather tensors only)."""
    if world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


# --- Data ------------------------------------------------------------------------------------


class SampleDataset(Dataset):
    """Global index -> (index, label, noise); a pure function of (seed, index)."""

    def __init__(self, pairs: PairSettings, num_tokens: int, code_dim: int, num_classes: int):
        self.pairs = pairs
        self.shape = dict(num_tokens=num_tokens, code_dim=code_dim, num_classes=num_classes)
        self.noise_dtype = NOISE_DTYPES[pairs.noise_dtype]

    def __len__(self) -> int:
        return self.pairs.num_pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        label, noise = draw_sample(
            self.pairs.seed,
            index,
            labels=self.pairs.labels,
            noise_dtype=self.noise_dtype,
            **self.shape,
        )
        return {"index": index, "label": label, "noise": noise}


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of consecutive indices of the given shards, never crossing a shard boundary."""

    def __init__(self, shards: Sequence[ShardRange], batch_size: int):
        self.shards, self.batch_size = list(shards), batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.shards:
            for start in range(shard.start, shard.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, shard.stop)))

    def __len__(self) -> int:
        return sum(-(-s.num_records // self.batch_size) for s in self.shards)


class PairDataModule(L.LightningDataModule):
    def __init__(
        self,
        recipe: GenerateRecipe,
        identity: RunIdentity,
        dataset: SampleDataset,
        manifest: dict[str, Any],
    ):
        super().__init__()
        self.recipe, self.identity, self.dataset, self.manifest = (
            recipe,
            identity,
            dataset,
            manifest,
        )
        self.folder = Path(recipe.output.folder)
        self.bar = recipe.run.progress_bar
        self.lock = FolderLock(self.folder)  # taken by rank 0 (``setup``)
        self.shards = plan_shards(recipe.pairs.num_pairs, recipe.output.shard_size)
        self.rank_shards: list[ShardRange] = []
        # Fewer pending shards than ranks (a small run, or a resume with few shards missing)
        # leaves a rank nothing to do: it runs an empty loop instead of Lightning refusing the
        # run (which left the manifest in_progress for every rerun).
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def setup(self, stage: str) -> None:
        """Rank 0 scans the folder (cheap); every rank checks the sha256 of a share of the
        finished shards (rank 0 hashing all of VAR-d16's 109 GB kept the others waiting for
        minutes, more on shared storage, against the process group's timeout); rank 0 opens
        the manifest; every rank gets the plan."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        plan = self._on_rank_zero(self._lock_and_scan)
        share = [self.shards[k] for k in plan.finished[rank::world]]
        try:
            hash_finished(self.folder, share, progress=self.trainer.is_global_zero and self.bar)
            error = None
        except (ShardError, OSError) as failure:
            error = str(failure)
        errors = [e for e in gather_objects(error, world) if e is not None]
        if errors:  # every rank stops with every rank's findings
            raise ShardError("\n".join(errors))
        self._on_rank_zero(lambda: open_manifest(self.folder, self.manifest, plan.pending))
        self.rank_shards = [self.shards[k] for k in plan.pending[rank::world]]
        if self.trainer.is_global_zero:
            log.info(
                "%d of %d shards already complete; %d to produce on %d ranks",
                len(plan.finished),
                len(self.shards),
                len(plan.pending),
                world,
            )

    def _lock_and_scan(self):
        self.lock.acquire()
        return scan_folder(self.folder, self.identity, self.shards)

    def _on_rank_zero(self, work):
        """``work()`` on rank 0, its result (or its one-line error, on every rank) broadcast."""
        result: dict[str, Any] = {}
        if self.trainer.is_global_zero:
            try:
                result["value"] = work()
            except (ShardError, OSError) as error:  # a read-only or full disk: every rank stops
                result["error"] = str(error)
        result = self.trainer.strategy.broadcast(result, src=0)
        if "error" in result:
            raise ShardError(result["error"])
        return result["value"]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=ShardBatchSampler(self.rank_shards, self.recipe.run.batch_size),
            num_workers=0,  # drawing noise is cheap next to the teacher
        )


# --- Model -----------------------------------------------------------------------------------


class PairGenerator(L.LightningModule):
    """Maps each batch's noise to tokens with the teacher (paper Alg. 1)."""

    def __init__(self, teacher: Teacher, sampling: SamplingConfig, flow: FlowSettings):
        super().__init__()
        self.teacher, self.sampling, self.flow = teacher, sampling, flow
        # Register the teacher's modules so Lightning moves them to this rank's device
        # (LlamaGenTeacher is a Module; VARTeacher holds its Modules as attributes).
        if isinstance(teacher, nn.Module):
            self.teacher_modules = nn.ModuleList([teacher])
        else:
            self.teacher_modules = nn.ModuleList(
                [m for m in vars(teacher).values() if isinstance(m, nn.Module)]
            )

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        if is_continuous(self.teacher):
            tokens = map_noise_continuous(
                self.teacher, batch["label"], batch["noise"], self.sampling
            ).to(CONTINUOUS_TOKENS_DTYPE)
        else:
            tokens = map_noise(
                self.teacher, batch["label"], batch["noise"], self.sampling, self.flow
            )
            tokens = tokens.to(token_dtype(self.teacher.codebook.shape[0]))
        return {
            "index": batch["index"].cpu(),
            "label": batch["label"].cpu(),
            "noise": batch["noise"].cpu(),
            "tokens": tokens.cpu(),
        }


# --- Callbacks -------------------------------------------------------------------------------


class ShardWriter(BasePredictionWriter):
    """Streams a rank's records into its current shard; publishes each shard when complete."""

    def __init__(
        self, folder: Path, identity: RunIdentity, shards: Sequence[ShardRange], shard_size: int
    ):
        super().__init__(write_interval="batch")
        self.folder, self.identity = folder, identity
        self.shards = {s.shard: s for s in shards}
        self.shard_size = shard_size
        self.open: OpenShard | None = None
        self.published: list[int] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        fingerprint = self.identity.teacher_fingerprint
        for i, index in enumerate(prediction["index"].tolist()):
            if self.open is None:
                self.open = OpenShard(
                    self.folder,
                    self.shards[index // self.shard_size],
                    self.identity,
                    device_type=pl_module.device.type,
                )
            self.open.write(
                encode_record(
                    index,
                    int(prediction["label"][i]),
                    prediction["noise"][i],
                    prediction["tokens"][i],
                    fingerprint,
                )
            )
            if self.open.complete:
                self.open.close()
                self.published.append(self.open.shard.shard)
                self.open = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.open is not None:  # leave nothing half-written under a final name
            self.open.abort()
            self.open = None


class PairProgress(Callback):
    """A tqdm bar on rank 0: pairs, pairs/s of the whole run (rank 0's rate x ranks), ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        datamodule = trainer.datamodule
        total = sum(s.num_records for s in datamodule.rank_shards)
        self.world = trainer.world_size
        self.start = time.perf_counter()
        self.done = 0
        self.bar = tqdm(
            total=total,
            unit="pair",
            dynamic_ncols=True,
            desc=f"pairs (rank 0 of {self.world})" if self.world > 1 else "pairs",
        )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.bar is None:
            return
        count = len(batch["index"])
        self.done += count
        self.bar.update(count)
        if self.world > 1:
            rate = self.done * self.world / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"all ranks ~{rate:.2f} pairs/s")

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- Run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenerationResult:
    folder: Path
    complete: bool
    identity: RunIdentity
    num_shards: int
    seconds: float
    global_rank: int = 0  # the process's rank: only rank 0 reports the run


def run_generation(
    recipe: GenerateRecipe,
    *,
    teacher: Teacher | None = None,
    callbacks: Sequence[Callback] = (),
) -> GenerationResult:
    """Generate (or resume) the pair data set a recipe describes."""
    if recipe.run.num_threads is not None:
        torch.set_num_threads(recipe.run.num_threads)
    if teacher is None:
        teacher = load_teacher(recipe.teacher, device="cpu")
    sampling = recipe.sampling.resolve(teacher.default_sampling())
    # The teacher's own checks of the settings (those of ``start``), before the folder is
    # touched: a manifest stamped with settings the teacher refuses would block the fixed rerun.
    with teacher.start(torch.zeros(1, dtype=torch.long), sampling):
        pass
    identity = run_identity(teacher, recipe)
    folder = Path(recipe.output.folder)
    shards = plan_shards(recipe.pairs.num_pairs, recipe.output.shard_size)
    check_folder(folder, identity, shards)  # refuse early, before any process is launched
    code_dim = identity.settings["code_dim"]  # C of the codebook, or of a continuous token
    dataset = SampleDataset(
        recipe.pairs, teacher.geometry.num_tokens, code_dim, teacher.num_classes
    )
    manifest = manifest_base(
        identity,
        teacher_spec=recipe_to_dict(recipe.teacher),
        num_pairs=recipe.pairs.num_pairs,
        shard_size=recipe.output.shard_size,
        recipe=recipe_to_dict(recipe),
    )
    writer = ShardWriter(folder, identity, shards, recipe.output.shard_size)
    run = recipe.run
    try:
        trainer = L.Trainer(
            accelerator=run.accelerator,
            devices=run.devices,
            num_nodes=run.num_nodes,
            strategy=run.strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,  # ranks take whole shards (PairDataModule)
            callbacks=[writer, PairProgress(run.progress_bar), *callbacks],
        )
    except MisconfigurationException as error:  # the run section (a GPU recipe here)
        raise ValueError(run_section_refusal(error)) from error
    datamodule = PairDataModule(recipe, identity, dataset, manifest)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Both are expected here: ShardBatchSampler returns every index of its shards, and
            # a rank (or a resumed run) may have no shard left to produce.
            warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
            warnings.filterwarnings(
                "ignore", message=".*Total length of `DataLoader` across ranks.*"
            )
            warnings.filterwarnings("ignore", message=LIGHTNING_PYTREE_WARNING)
            trainer.predict(
                PairGenerator(teacher, sampling, recipe.flow),
                datamodule=datamodule,
                return_predictions=False,
            )
        # Every rank waits for the others' shards (an idle rank skips the predict hooks, so
        # here): rank 0, done first, returned and printed nothing while the last rank wrote the
        # complete manifest. A rank that fails meanwhile takes the waiting ones down
        # (Lightning's launcher watches its processes), so none exits 0 on an unfinished run.
        # (``ddp_spawn``: the ranks have ended by now, no process group is left to wait on.)
        trainer.strategy.barrier("pairs_published")
        seconds = time.perf_counter() - start
        complete = finalize_if_complete(folder, shards)
    finally:
        datamodule.lock.release()  # (``ddp_spawn``: rank 0's process held it, and has ended)
    return GenerationResult(folder, complete, identity, len(shards), seconds, trainer.global_rank)
