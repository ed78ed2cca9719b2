"""Run a training stage with Lightning: data, checkpoints (Lightning `.ckpt` to resume + the model as
safetensors), validation grids, a progress bar; one GPU, many (DDP) or several nodes, or the CPU.

Resuming: `train(cfg, resume=True)` continues from `OUTPUT/checkpoints/last.ckpt`; the sampler restarts at the
restored step, so the samples, the random draws and hence the loss curve are those of an uninterrupted run.

Several devices (DDP, `devices=N num_nodes=M`): every process draws its own samples (`StepSampler` splits them by
rank, so Lightning must not wrap it in a distributed sampler of its own), the gradients are averaged, and a step
is the step of one device with batch N * M * batch_size (the losses are means over objects). Process 0 alone
writes config.json, the checkpoints, the model and the validation images, and prints; a NaN stops every process
at the same step (`ReconstructionModule.mean_over_devices`).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from lrmesh.checkpoints import check_resume_checkpoint
from lrmesh.errors import InputError
from lrmesh.train.config import TrainConfig
from lrmesh.train.data import MultiviewDataset, StepSampler, list_objects, split_objects
from lrmesh.train.module import ReconstructionModule, TrainingDiverged

LAST = "last.ckpt"


class TrainingData(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        names = list_objects(cfg.data.root)
        self.train_names, self.val_names = split_objects(names, cfg.data.validation_fraction)

    def _loader(self, dataset: MultiviewDataset, sampler, batch_size: int) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Loader batches consumed so far: optimizer steps x accumulation (restored before this is called).
        start = trainer.global_step * self.cfg.accumulate
        sampler = StepSampler(self.cfg.batch_size, start, trainer.global_rank, trainer.world_size)
        dataset = MultiviewDataset(self.cfg.data, self.train_names, self.cfg.seed, train=True,
                                   batch_size=self.cfg.batch_size)
        return self._loader(dataset, sampler, self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        dataset = MultiviewDataset(self.cfg.data, self.val_names, self.cfg.seed, train=False)
        return self._loader(dataset, None, 1)


class RememberCheckpoint(Callback):
    """Tells the module where the last good checkpoint is, for the NaN message."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        pl_module.last_checkpoint = str(Path(pl_module.cfg.output) / "checkpoints" / LAST)


def last_checkpoint(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / "checkpoints" / LAST


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          callbacks: list[Callback] | None = None) -> ReconstructionModule:
    """Train one stage as configured; returns the module (its model holds the final weights). `callbacks`: more
    Lightning callbacks (e.g. to watch the batches)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output = Path(cfg.output)
    ckpt_path = None
    if resume:
        if not last_checkpoint(cfg).is_file():
            raise InputError(f"nothing to resume: {last_checkpoint(cfg)} does not exist")
        ckpt_path = str(last_checkpoint(cfg))
    data = TrainingData(cfg)
    module = ReconstructionModule(cfg)
    if ckpt_path:
        check_resume_checkpoint(Path(ckpt_path), set(module.state_dict()))
    output.mkdir(parents=True, exist_ok=True)
    checkpoints = ModelCheckpoint(dirpath=output / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                                  every_n_train_steps=cfg.checkpoint_every, save_last=True, save_top_k=1,
                                  save_on_train_epoch_end=False)
    calls: list[Callback] = [checkpoints, RememberCheckpoint(), *(callbacks or [])]
    if progress:
        calls.append(TQDMProgressBar(refresh_rate=1))
    trainer = L.Trainer(
        max_steps=cfg.max_steps, max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        precision=cfg.precision, accumulate_grad_batches=cfg.accumulate,
        gradient_clip_val=cfg.optim.gradient_clip or None, callbacks=calls, enable_progress_bar=progress,
        val_check_interval=cfg.validate_every * cfg.accumulate, check_val_every_n_epoch=None,
        limit_val_batches=min(len(data.val_names), 4), num_sanity_val_steps=0, log_every_n_steps=cfg.log_every,
        default_root_dir=str(output), logger=L.pytorch.loggers.CSVLogger(str(output), name="logs"),
        enable_model_summary=False, use_distributed_sampler=False,  # StepSampler splits the samples by rank
    )
    if isinstance(trainer.strategy, DDPStrategy) and cfg.stage == 2:
        # Which mesh-synthesizer heads a step reaches varies (an empty mesh leaves the colour head out, point losses
        # the deformation and weight heads); DDP must look for the unused ones rather than wait for them. Stage 1
        # reaches every parameter at every step. (Lightning sets this flag from its strategy name only.)
        trainer.strategy._ddp_kwargs["find_unused_parameters"] = True
    if trainer.is_global_zero:
        (output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    try:
        with warnings.catch_warnings():
            # The sampler is endless and resumes by step itself; Lightning's mid-epoch warnings don't apply.
            warnings.filterwarnings("ignore", message=".*(mid-epoch|does not have many workers|infinite).*")
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except TrainingDiverged as err:  # raised by every process at once (see mean_over_devices): process 0 reports it
        err.reported_elsewhere = not trainer.is_global_zero
        raise
    trainer.save_checkpoint(last_checkpoint(cfg))  # the final state, so --resume after the end is a no-op
    if trainer.is_global_zero:
        print(f"lrmesh: trained to step {trainer.global_step}; model: {output}", file=sys.stderr)
    return module
