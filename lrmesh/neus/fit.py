"""`lrmesh fit`: optimise a NeuS or NeRF model on the posed images of one scene, then export its mesh, a test-
trajectory video and test PSNR.

Training runs under Lightning on one device (a GPU or the CPU; more are refused, see `ONE_DEVICE`). Every step
draws random pixels of random training images with a generator seeded by (seed, step, rank), so a resumed run
draws what an uninterrupted one would; the occupancy grid, the dynamic ray count and the optimiser state live in
the checkpoint. A Ctrl-C saves `OUT/checkpoints/last.ckpt` and `fit(..., resume=True)` continues from it.

Outputs, in OUT: mesh.obj (or .glb / .ply; the coordinates are the dataset's own world frame: normalised scene
coordinates taken back through `Scene.to_world`; a GLB holds them turned to glTF's y up), metrics.json (test
PSNR, steps, seconds, mesh size), video.mp4 (an orbit around the scene), model.safetensors + config.json.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lrmesh.checkpoints import check_resume_checkpoint
from lrmesh.data.scenes import Scene, load_scene
from lrmesh.errors import ConfigError, InputError, LrmeshError
from lrmesh.geometry.mesh import transform_similarity
from lrmesh.io.mesh import save_mesh
from lrmesh.metrics import psnr as _image_psnr
from lrmesh.neus.config import FitConfig
from lrmesh.neus.models import SceneModel, build_model
from lrmesh.neus.rendering import mask_loss

LAST = "last.ckpt"
MIN_RAYS = 64  # the dynamic batch never shrinks below this (a step of rays that all miss has no samples)
SEED_STRIDE = 1_000_003  # generator seed = seed * SEED_STRIDE^2 + step * SEED_STRIDE + rank
# Several processes would each draw their own rays and march their own occupancy grid (the grids drift apart), so
# a fit refuses them rather than duplicate the work.
ONE_DEVICE = ("lrmesh fit runs on one device; got devices={devices} num_nodes={nodes} ({world} processes): set "
              "devices=1 num_nodes=1 (several GPUs help `lrmesh train`, not a per-scene fit)")


class FitDiverged(LrmeshError):
    """A loss became NaN or infinite; the message names the step and the terms."""


class FitInterrupted(LrmeshError):
    """Ctrl-C: the last checkpoint was written; `lrmesh fit ... --resume` continues."""


def pixel_rays(c2w: Tensor, intrinsics: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres (row + 0.5, col + 0.5) of cameras c2w (R, 4, 4) OpenGL, intrinsics (R, 4)
    fx, fy, cx, cy -> origins (R, 3), unit directions (R, 3)."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    x = (cols.to(c2w.dtype) + 0.5 - cx) / fx
    y = -(rows.to(c2w.dtype) + 0.5 - cy) / fy  # image rows go down, camera y goes up
    local = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # OpenGL cameras look down -z
    dirs = torch.nn.functional.normalize((c2w[:, :3, :3] @ local[..., None])[..., 0], dim=-1)
    return c2w[:, :3, 3].expand_as(dirs), dirs


def image_rays(c2w: Tensor, intrinsics: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """All rays of one view (c2w (4, 4), intrinsics (4,)), row-major -> origins, dirs (H * W, 3)."""
    rows, cols = torch.meshgrid(torch.arange(height, device=c2w.device), torch.arange(width, device=c2w.device),
                                indexing="ij")
    n = height * width
    return pixel_rays(c2w.expand(n, 4, 4), intrinsics.expand(n, 4), rows.reshape(-1), cols.reshape(-1))


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR (dB, data range 1) of colours (..., 3) taken as one image: rays of a batch, or an (H, W, 3) view."""
    return float(_image_psnr(pred.reshape(1, -1, 3, 1), target.reshape(1, -1, 3, 1).to(pred.dtype)))


class _Steps(IterableDataset):
    """An endless stream of nothing: each step draws its own rays from the scene held by the module."""

    def __iter__(self):
        while True:
            yield 0


@dataclass
class Background:
    kind: str

    def colors(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        if self.kind == "random":
            return torch.rand(n, 3, device=device, generator=generator)
        value = 1.0 if self.kind == "white" else 0.0
        return torch.full((n, 3), value, device=device)


class FitSystem(L.LightningModule):
    def __init__(self, cfg: FitConfig, scene: Scene, val_scene: Scene | None = None):
        super().__init__()
        self.cfg = cfg
        self.model: SceneModel = build_model(cfg, scene.radius)
        self.register_buffer("images", scene.images, persistent=False)
        self.register_buffer("masks", scene.masks if scene.masks is not None else torch.zeros(0), persistent=False)
        self.register_buffer("c2w", scene.c2w, persistent=False)
        self.register_buffer("intrinsics", scene.intrinsics, persistent=False)
        self.has_masks = scene.masks is not None
        self.val_scene = val_scene
        self.num_rays = cfg.render.rays_initial
        self.background = Background(cfg.scene.background)
        self.last_val_psnr: float | None = None

    # --- data -----------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def _generator(self) -> torch.Generator:
        seed = (self.cfg.seed * SEED_STRIDE + self.global_step) * SEED_STRIDE + self.global_rank
        return torch.Generator(device=self.device).manual_seed(seed % (2**63))

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        count, height, width = self.images.shape[:3]
        flat = torch.randint(count * height * width, (n,), device=self.device, generator=generator)
        views, pixels = flat // (height * width), flat % (height * width)
        rows, cols = pixels // width, pixels % width
        origins, dirs = pixel_rays(self.c2w[views], self.intrinsics[views], rows, cols)
        rgb = self.images[views, rows, cols]
        mask = self.masks[views, rows, cols][:, None] if self.has_masks else None
        return origins, dirs, rgb, mask

    # --- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        step = self.global_step
        generator = self._generator()
        self.model.update_step(step)
        self.model.update_occupancy(step, generator)
        n = self.num_rays
        origins, dirs, rgb, mask = self._sample(n, generator)
        background = self.background.colors(n, self.device, generator)
        if mask is not None:  # the images lie on white: put the masked pixels on this step's background
            rgb = rgb + (1 - mask) * (background - 1.0)
        out = self.model.render(origins, dirs, background, stratified=True, generator=generator)
        loss_cfg = self.cfg.loss
        terms = {}
        if loss_cfg.rgb_mse:
            terms["rgb_mse"] = torch.nn.functional.mse_loss(out.rgb, rgb)
        if loss_cfg.rgb_l1:
            terms["rgb_l1"] = torch.nn.functional.l1_loss(out.rgb, rgb)
        if mask is not None and loss_cfg.mask:
            terms["mask"] = mask_loss(out.opacity, mask)
        terms.update(self.model.regularisers(out, n))
        weights = {"rgb_mse": loss_cfg.rgb_mse, "rgb_l1": loss_cfg.rgb_l1, "mask": loss_cfg.mask,
                   "eikonal": loss_cfg.eikonal, "sparsity": loss_cfg.sparsity, "opaque": loss_cfg.opaque,
                   "distortion": loss_cfg.distortion}
        loss = sum(weights[k] * v for k, v in terms.items())
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise FitDiverged(f"loss is not finite at step {step} ({values}); the last good checkpoint is "
                              f"{Path(self.trainer.default_root_dir) / 'checkpoints' / LAST}")
        # dynamic batch: aim at target_samples samples next step (instant-nsr-pl's train_num_rays update)
        r = self.cfg.render
        self.num_rays = int(min(max(n * r.target_samples / max(out.num_samples, 1), MIN_RAYS), r.rays_max))
        with torch.no_grad():
            train_psnr = psnr(out.rgb.clamp(0, 1), rgb)
        self.log("loss", loss, prog_bar=True)
        self.log("psnr", train_psnr, prog_bar=True)
        self.log("rays", float(n), prog_bar=True)
        if hasattr(self.model, "inv_s"):
            self.log("inv_s", self.model.inv_s.detach(), prog_bar=True)
        for k, v in terms.items():
            self.log(f"train/{k}", v)
        every = self.cfg.validate_every
        if every and self.val_scene is not None and step > 0 and step % every == 0:
            self.last_val_psnr = self.validation_psnr(0)
            self.log("val_psnr", self.last_val_psnr, prog_bar=True)
        return loss

    @torch.no_grad()
    def validation_psnr(self, index: int) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            image = render_view(self.model, self.val_scene, index, self.cfg, self.device)
        finally:
            self.model.train(was_training)
        return psnr(image, self.val_scene.images[index].to(self.device))

    def configure_optimizers(self):
        o = self.cfg.optim
        variance = [p for n, p in self.model.named_parameters() if n == "variance"]
        fields = [p for n, p in self.model.named_parameters() if n != "variance"]
        groups = [{"params": fields, "lr": o.lr}]
        if variance:
            groups.append({"params": variance, "lr": o.lr_variance})
        # fused: one kernel over all parameters; on a CPU 4-5x faster than foreach for the ~12 M grid entries
        optimizer = torch.optim.Adam(groups, betas=tuple(o.betas), eps=o.eps, fused=True)
        total, warmup = self.cfg.steps, o.warmup_steps
        decay_steps = max(total - warmup, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return 0.01 + 0.99 * step / warmup
            return o.final_lr_ratio ** (min(step - warmup, decay_steps) / decay_steps)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lrmesh_fit"] = {"num_rays": self.num_rays, "method": self.cfg.method}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("lrmesh_fit", {})
        if state.get("method", self.cfg.method) != self.cfg.method:
            raise InputError(f"the checkpoint is a {state['method']} fit, not {self.cfg.method}")
        self.num_rays = state.get("num_rays", self.num_rays)


@torch.no_grad()
def render_view(model: SceneModel, scene: Scene, index: int, cfg: FitConfig, device: torch.device,
                c2w: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """Render view `index` of `scene` (or pose `c2w` with its intrinsics scaled to `size` (H, W)) over the
    background the scene's images were composited on -> (H, W, 3)."""
    height, width = size or (scene.height, scene.width)
    intrinsics = scene.intrinsics[index].to(device)
    if size is not None:
        intrinsics = intrinsics * torch.tensor([width / scene.width, height / scene.height] * 2, device=device)
    pose = (scene.c2w[index] if c2w is None else c2w).to(device)
    origins, dirs = image_rays(pose, intrinsics, height, width)
    white = torch.ones(3, device=device)
    out = model.render_image(origins, dirs, white, cfg.render.chunk_rays)
    return out.rgb.clamp(0, 1).reshape(height, width, 3)


class _SaveOnInterrupt(Callback):
    """Ctrl-C: write the checkpoint to resume from. (Lightning's OnExceptionCheckpoint also makes every fit
    without ckpt_path resume from a "last" checkpoint it finds, which a fresh fit must not do.)"""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            trainer.save_checkpoint(self.path)


class _Deadline(Callback):
    """Ends training once max_minutes of fitting have passed (Lightning's max_time also counts set-up)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds and time.monotonic() - self.start > self.seconds:
            trainer.should_stop = True


def check_one_device(cfg: FitConfig, world_size: int | None = None) -> None:
    """ConfigError unless the fit runs in one process (`world_size`: the trainer's, else asked of Lightning from the
    config's accelerator, devices and nodes without building a run)."""
    if world_size is None:
        quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # no "GPU available" lines before the run's own
        try:
            world_size = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                   enable_model_summary=False).world_size
        finally:
            quiet.setLevel(level)
    if world_size > 1:
        raise ConfigError(ONE_DEVICE.format(devices=cfg.devices, nodes=cfg.num_nodes, world=world_size))


def fit(data: str | Path, cfg: FitConfig, output: str | Path, resume: bool = False, progress: bool = True,
        callbacks: list[Callback] | None = None) -> dict:
    """Fit `cfg.method` to the scene in folder `data`; write the outputs to `output`; returns the metrics.

    Raises InputError for a bad scene (see `load_scene`), FitDiverged for a NaN loss, FitInterrupted on Ctrl-C
    (after saving the checkpoint to resume from).
    """
    output = Path(output)
    ckpt = output / "checkpoints" / LAST
    if resume and not ckpt.is_file():
        raise InputError(f"nothing to resume: {ckpt} does not exist")
    if not resume and ckpt.is_file():
        raise InputError(f"{output} already holds a fit ({ckpt}): continue it with --resume, or choose another "
                         "output folder")
    s = cfg.scene
    scene = load_scene(data, s.kind, "train", s.downscale, s.use_masks)
    test = load_scene(data, s.kind, "test", s.downscale, use_masks=False)
    L.seed_everything(cfg.seed, verbose=False)
    system = FitSystem(cfg, scene, test)
    if resume:
        check_resume_checkpoint(ckpt, set(system.state_dict()))
    every = min(cfg.checkpoint_every, cfg.steps)
    checkpoints = ModelCheckpoint(dirpath=output / "checkpoints", filename="last", every_n_train_steps=every,
                                  save_top_k=1, save_on_train_epoch_end=False, enable_version_counter=False)
    calls: list[Callback] = [checkpoints, _SaveOnInterrupt(ckpt), _Deadline(cfg.max_minutes)]
    if progress:
        calls.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(max_steps=cfg.steps, accelerator=cfg.accelerator, devices=cfg.devices,
                        num_nodes=cfg.num_nodes, precision=cfg.precision, callbacks=calls + list(callbacks or []),
                        enable_progress_bar=progress, limit_val_batches=0, num_sanity_val_steps=0,
                        log_every_n_steps=cfg.log_every, default_root_dir=str(output), enable_model_summary=False,
                        logger=L.pytorch.loggers.CSVLogger(str(output), name="logs"), enable_checkpointing=True)
    check_one_device(cfg, trainer.world_size)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    started = time.monotonic()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|infinite|mid-epoch).*")
            trainer.fit(system, ckpt_path=str(ckpt) if resume else None)
    except SystemExit as stop:  # Lightning's answer to Ctrl-C, after OnExceptionCheckpoint ran
        if trainer.interrupted:
            raise FitInterrupted(f"interrupted at step {trainer.global_step}; checkpoint {ckpt}; continue with "
                                 "--resume") from stop
        raise
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning leaves Ctrl-C ignored after an interrupt
    fit_seconds = time.monotonic() - started
    trainer.save_checkpoint(ckpt)  # the final state: --resume after the end is a no-op
    if trainer.global_rank != 0:
        return {}
    return export(system, scene, test, cfg, output, trainer.global_step, fit_seconds, progress)


def export(system: FitSystem, scene: Scene, test: Scene, cfg: FitConfig, output: Path, steps: int,
           fit_seconds: float, progress: bool = True) -> dict:
    """Mesh, test PSNR, video, model weights and metrics.json of a fitted system."""
    say = (lambda text: print(f"lrmesh: {text}", file=sys.stderr)) if progress else (lambda text: None)
    model = system.model.eval()
    device = next(model.parameters()).device
    say("extracting the mesh")
    mesh = mesh_path = None
    try:
        mesh = model.extract_mesh(cfg.mesh.resolution, cfg.mesh.threshold, cfg.mesh.fine_pass, say)
    except LrmeshError as err:  # the weights, PSNR and video are still worth writing
        warnings.warn(f"no mesh written: {err}", RuntimeWarning, stacklevel=2)
    if mesh is not None:
        world = transform_similarity(mesh, scene.to_world)  # the dataset's frame
        mesh_path = save_mesh(world, output / f"mesh{cfg.mesh.format}", keep_coordinates=True)[0]
    views = range(len(test) if not cfg.scene.test_views else min(cfg.scene.test_views, len(test)))
    scores = [psnr(render_view(model, test, i, cfg, device), test.images[i].to(device))
              for i in _progress(views, progress, "test views")]
    video = None
    if cfg.video_frames:
        video = write_trajectory_video(model, test, cfg, output / "video.mp4", device, progress)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if isinstance(v, Tensor)}, output / "model.safetensors")
    metrics = {
        "method": cfg.method, "steps": steps, "seconds": round(fit_seconds, 2),
        "test_psnr": sum(scores) / len(scores), "test_views": len(scores),
        "num_vertices": mesh.num_vertices if mesh else 0, "num_faces": int(mesh.faces.shape[0]) if mesh else 0,
        "mesh": mesh_path.name if mesh_path else None,
        "video": video.name if video else None, "rays_per_step": system.num_rays,
        "occupied_fraction": model.occupancy.occupied_fraction(),
    }
    if hasattr(model, "inv_s"):
        metrics["inv_s"] = float(model.inv_s.detach())
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    say(f"test PSNR {metrics['test_psnr']:.2f} dB over {len(scores)} views; mesh {mesh_path} "
        f"({metrics['num_vertices']} vertices)")
    return metrics


def write_trajectory_video(model: SceneModel, scene: Scene, cfg: FitConfig, path: Path, device: torch.device,
                           progress: bool) -> Path:
    """An orbit at the test cameras' mean distance and elevation, with the first test camera's intrinsics."""
    from lrmesh.cameras import turntable_poses
    from lrmesh.io.video import write_video

    positions = scene.c2w[:, :3, 3].double()
    distance = positions.norm(dim=-1).mean().item()
    elevation = math.degrees(torch.asin((positions[:, 2] / positions.norm(dim=-1)).clamp(-1, 1)).mean().item())
    size = cfg.video_resolution or None
    shape = (size, size * scene.width // scene.height) if size else None
    poses = turntable_poses(cfg.video_frames, distance, elevation)
    frames = [render_view(model, scene, 0, cfg, device, c2w=p, size=shape).cpu()
              for p in _progress(poses, progress, "video")]
    frames_t = torch.stack(frames)
    if frames_t.shape[1] % 2 or frames_t.shape[2] % 2:  # H.264 in yuv420p wants even sizes
        frames_t = frames_t[:, : frames_t.shape[1] // 2 * 2, : frames_t.shape[2] // 2 * 2]
    return write_video(frames_t, path, fps=30)


def _progress(items, show: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not show, leave=False)
