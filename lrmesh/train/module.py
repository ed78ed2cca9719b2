"""The Lightning module of both training stages: one module, two render paths (`render_nerf`, `render_mesh`).

Stage 1 volume-renders crops through the NeRF synthesizer; stage 2 extracts the FlexiCubes mesh of the whole
grid (training mode: differentiable w.r.t. SDF, deformation and weights), rasterizes it with
`lrmesh.render.raster` (nvdiffrast on a GPU when installed, the PyTorch rasterizer otherwise) and shades every
covered pixel with the colour head at its surface point. Both return the same typed `Rendered`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lrmesh import metrics
from lrmesh.cameras import unproject_depth
from lrmesh.checkpoints import load_hf_vit, load_model, save_model
from lrmesh.config import EncoderConfig
from lrmesh.errors import LrmeshError
from lrmesh.geometry.flexicubes import flexicubes_extract, surface_cube_mask
from lrmesh.model.lrm import LRM
from lrmesh.model.single_view import SingleViewLRM
from lrmesh.openlrm import load_openlrm, save_release
from lrmesh.model.triplane import sample_triplanes
from lrmesh.render.raster import antialias, interpolate, project_intrinsics, rasterize
from lrmesh.render.shaded import FAR, NEAR
from lrmesh.train import losses
from lrmesh.train.config import TrainConfig

# NeRF raw density iso-level that becomes the SDF zero level when stage 2 starts from stage 1 (reference: 10).
NERF_TO_SDF_LEVEL = 10.0


Generators = torch.Generator | list[torch.Generator] | None  # random draws of a render: one per object, or shared


class TrainingDiverged(LrmeshError):
    """A loss became NaN or infinite."""


@dataclass
class Rendered:
    rgb: Tensor  # (B, T, 3, C, C) on white
    alpha: Tensor  # (B, T, 1, C, C)
    depth: Tensor  # (B, T, 1, C, C) camera z-depth, 0 off the object (stage 2) / expected depth (stage 1)
    normal: Tensor | None = None  # (B, T, 3, C, C) world normals (stage 2)
    regularizers: dict[str, Tensor] | None = None  # stage 2: unweighted FlexiCubes / SDF regularisers
    planes: Tensor | None = None  # (B, 3, C, H, W) the triplanes rendered (set by `ReconstructionModule.forward`)


def build_model(cfg: TrainConfig) -> LRM | SingleViewLRM:
    """A fresh model of the config's preset, or `cfg.init` loaded (a stage-1 NeRF checkpoint is converted into
    the mesh model for stage 2, see `nerf_to_mesh_state`; an OpenLRM release for an OpenLRM preset)."""
    model_cfg = cfg.model_config()
    if cfg.single_image:
        if not cfg.init:
            return SingleViewLRM(model_cfg)
        model = load_openlrm(cfg.init, source_size=model_cfg.source_size)
        if model.cfg != model_cfg:
            raise LrmeshError(f"{cfg.init} is not the {cfg.model_preset} model (with the config's overrides)")
        return model
    model = LRM(model_cfg)
    if cfg.init:
        source = load_model(cfg.init)
        _check_normalisation(source.cfg.encoder, model_cfg.encoder, cfg.init)
        state = source.state_dict()
        if source.kind == "nerf" and model.kind == "mesh":
            state = nerf_to_mesh_state(state, source.cfg.synthesizer.num_layers)
        missing, unexpected = model.load_state_dict(state, strict=False)
        new_heads = ("synthesizer.decoder.net_deformation.", "synthesizer.decoder.net_weight.")
        missing = [k for k in missing if not k.startswith(new_heads)]
        if missing or unexpected:
            raise LrmeshError(f"{cfg.init} does not fit the {cfg.model_preset} model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    elif cfg.encoder_weights:
        load_hf_vit(model, cfg.encoder_weights)
    return model


def _check_normalisation(source: EncoderConfig, target: EncoderConfig, init: str) -> None:
    """Fine-tuning must feed the encoder the pixels its weights learnt on: a change of input statistics
    between `init` and the preset is an error, not a silent shift of every input."""
    if (tuple(source.image_mean), tuple(source.image_std)) != (tuple(target.image_mean), tuple(target.image_std)):
        raise LrmeshError(f"{init} was trained with input mean {list(source.image_mean)} / std "
                          f"{list(source.image_std)}, the config asks for {list(target.image_mean)} / "
                          f"{list(target.image_std)}; set model.encoder.image_mean and model.encoder.image_std "
                          "to the checkpoint's values (lrmesh/normalisation.py)")


def nerf_to_mesh_state(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Stage-1 weights -> stage-2 weights (the reference's initialisation, done by parameter names).

    The NeRF MLP `decoder.net` (outputs: raw density, rgb) becomes two MLPs with its hidden layers: `net_rgb`
    keeps the three colour outputs, `net_sdf` the negated density shifted by the iso-level,
    sdf = NERF_TO_SDF_LEVEL - density_raw = (-w) x + (level - b), so inside (dense) is negative.
    The deformation and weight heads keep their fresh initialisation.
    """
    prefix = "synthesizer.decoder.net."
    last = f"{prefix}{2 * (num_layers - 1)}."  # Linear layers sit at even indices of the Sequential
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        sdf_key, rgb_key = key.replace(prefix, "synthesizer.decoder.net_sdf."), key.replace(
            prefix, "synthesizer.decoder.net_rgb.")
        if key.startswith(last):
            is_bias = key.endswith("bias")
            out[sdf_key] = (NERF_TO_SDF_LEVEL - value[:1]) if is_bias else -value[:1]
            out[rgb_key] = value[1:4]
        else:
            out[sdf_key], out[rgb_key] = value.clone(), value.clone()
    return out


class ReconstructionModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, model: LRM | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg)
        self.model.transformer.gradient_checkpointing = cfg.gradient_checkpointing
        self._lpips = None  # kept out of the state dict: it is a fixed metric network, not ours
        self._edges: Tensor | None = None
        self.last_checkpoint: str | None = None

    # -------------------------------------------------------------------------------------------- rendering
    def render(self, planes: Tensor, c2w: Tensor, k: Tensor, size: int, generator: Generators,
               backgrounds: Tensor | None = None) -> Rendered:
        if self.model.kind == "nerf":
            return self.render_nerf(planes, c2w, k, size, generator, backgrounds)
        return self.render_mesh(planes, c2w, k, size)

    def render_nerf(self, planes: Tensor, c2w: Tensor, k: Tensor, size: int, generator: Generators,
                    backgrounds: Tensor | None = None) -> Rendered:
        """planes (B, 3, C, H, W), c2w (B, T, 4, 4), k (B, T, 3, 3) -> Rendered with (B, T, ., size, size);
        backgrounds (B, T, 1): grey level per view (OpenLRM's random backgrounds), default white.

        `generator`: one per object (training: `sample_generators`), or one drawn from for each object in turn.
        The sample draws are made up front: a checkpointed view recomputed in the backward pass must place its
        samples where the forward pass did (checkpointing restores the global RNG, not a Generator's)."""
        synth = self.model.synthesizer
        b, t = c2w.shape[:2]
        cameras = torch.cat([c2w.flatten(2), k.flatten(2)], dim=-1)  # (B, T, 25)
        generators = generator if isinstance(generator, (list, tuple)) else [generator] * b
        u = torch.stack([torch.rand(2, t, size * size, synth.cfg.samples_per_ray // 2, generator=g,
                                    device=planes.device) for g in generators], dim=1)  # (2, B, T, S*S, n/2)
        # u[0]: stratified, u[1]: importance draws

        def view(p: Tensor, j: int) -> tuple[Tensor, Tensor, Tensor]:
            bg = None if backgrounds is None else backgrounds[:, j:j + 1]
            out = synth.render(p, cameras[:, j:j + 1], size, u_stratified=u[0, :, j:j + 1],
                               u_importance=u[1, :, j:j + 1], backgrounds=bg)
            return out["images_rgb"], out["images_depth"], out["images_weight"]

        if self.cfg.gradient_checkpointing and self.training:
            views = [checkpoint(view, planes, j, use_reentrant=False) for j in range(t)]
        else:
            views = [view(planes, j) for j in range(t)]
        rgb, depth, weight = (torch.cat(parts, dim=1) for parts in zip(*views))
        return Rendered(rgb=rgb, depth=depth, alpha=weight.clamp(0, 1))

    def render_mesh(self, planes: Tensor, c2w: Tensor, k: Tensor, size: int) -> Rendered:
        """FlexiCubes mesh of each triplane, rasterized into the views; see the module docstring."""
        synth = self.model.synthesizer
        out: list[Rendered] = []
        for i in range(planes.shape[0]):
            with torch.autocast(planes.device.type, enabled=False):  # geometry in float32
                p = planes[i:i + 1].float()
                if self.cfg.gradient_checkpointing and self.training:  # keep no MLP activations of the grid
                    fields = checkpoint(synth.grid_fields, p, use_reentrant=False)
                else:
                    fields = synth.grid_fields(p)
                verts, cubes = synth.grid(p.device)
                sdf = synth.fix_empty_sdf(fields.sdf[:, 0])
                deformed = verts + synth.scale_deformation(fields.deformation)
                surface = surface_cube_mask(sdf.detach(), cubes)
                fc = flexicubes_extract(deformed, sdf, cubes, synth.cfg.grid_res, surface, fields.weights[surface],
                                        training=True)
                if self._edges is None or self._edges.device != cubes.device:
                    self._edges = losses.grid_edges(cubes)
                regs = {
                    "sdf_entropy": losses.sdf_sign_entropy(sdf, self._edges),
                    "surface": fc.dev_loss.mean() if fc.dev_loss.numel() else sdf.sum() * 0,
                    "weights": (fields.weights**2).mean(),
                }
                out.append(self._rasterize_views(p, fc.vertices, fc.faces, c2w[i].float(), k[i].float(), size, regs))
        return Rendered(*(torch.stack([getattr(r, name) for r in out]) for name in ("rgb", "alpha", "depth", "normal")),
                        regularizers={key: torch.stack([r.regularizers[key] for r in out]).mean()
                                      for key in out[0].regularizers})

    def _rasterize_views(self, planes: Tensor, vertices: Tensor, faces: Tensor, c2w: Tensor, k: Tensor, size: int,
                         regs: dict[str, Tensor]) -> Rendered:
        """One mesh into T views: rgb (T, 3, S, S) etc."""
        t = c2w.shape[0]
        if faces.shape[0] == 0:  # nothing to see: white, empty; the regularisers still train
            zeros = vertices.sum() * 0 + torch.zeros(t, 1, size, size, device=c2w.device)
            return Rendered(rgb=zeros.expand(t, 3, size, size) + 1, alpha=zeros, depth=zeros,
                            normal=zeros.expand(t, 3, size, size), regularizers=regs)
        clip = project_intrinsics(vertices, c2w, k, NEAR, FAR)  # (T, V, 4)
        rast = rasterize(clip, faces, size, size)
        covered = rast.mask  # (T, S, S)
        points = interpolate(vertices, rast, faces)[covered]  # (P, 3) surface points seen by pixels
        colors = self.model.synthesizer.decoder.rgb(self.model.synthesizer.features(planes, points))
        rgb = torch.ones(t, size, size, 3, device=c2w.device, dtype=colors.dtype).index_put((covered,), colors)
        corners = vertices[faces]  # (F, 3, 3)
        face_normals = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                                   dim=-1)
        normal = torch.zeros(t, size, size, 3, device=c2w.device).index_put((covered,),
                                                                            face_normals[rast.triangle_id[covered]])
        shaded = antialias(torch.cat([rgb, covered[..., None].float()], dim=-1), rast, clip, faces)
        return Rendered(rgb=rearrange(shaded[..., :3], "t h w c -> t c h w"),
                        alpha=rearrange(shaded[..., 3:], "t h w c -> t c h w"),
                        depth=rast.depth[:, None], normal=rearrange(normal, "t h w c -> t c h w"),
                        regularizers=regs)

    # --------------------------------------------------------------------------------------------- training
    def planes(self, batch: dict[str, Tensor]) -> Tensor:
        """Triplanes of the batch's inputs: six views and cameras (InstantMesh), or the first view and its
        camera (OpenLRM's single image at the canonical source camera)."""
        if isinstance(self.model, SingleViewLRM):
            return self.model.forward_planes(batch["input_images"][:, 0], batch["input_cameras"][:, 0])
        return self.model.forward_planes(batch["input_images"], batch["input_cameras"])

    def forward(self, batch: dict[str, Tensor], generator: Generators = None) -> Rendered:
        planes = self.planes(batch)
        size = batch["target_images"].shape[-1]
        rendered = self.render(planes, batch["target_c2w"], batch["target_intrinsics"], size, generator,
                               batch.get("target_backgrounds"))
        rendered.planes = planes
        return rendered

    def inside_logits(self, planes: Tensor, points: Tensor) -> Tensor:
        """planes (B, 3, C, H, W), points (B, P, 3) -> (B, P) logits of "inside": -sdf for the mesh synthesizer,
        raw density minus NERF_TO_SDF_LEVEL for the NeRF one (the level stage 2 starts its zero set at)."""
        synth = self.model.synthesizer
        features = sample_triplanes(planes, points, synth.cfg.box_warp)
        if self.model.kind == "mesh":
            return -synth.decoder.sdf(features)[..., 0]
        return synth.decoder(features).sigma[..., 0] - NERF_TO_SDF_LEVEL

    def compute_losses(self, rendered: Rendered | None, batch: dict[str, Tensor],
                       planes: Tensor | None = None) -> dict[str, Tensor]:
        """Weighted loss terms; their sum is the loss. `planes` defaults to `rendered.planes`; `rendered` is None
        when no loss needs renders."""
        w = self.cfg.loss
        terms = self._render_losses(rendered, batch) if rendered is not None else {}
        planes = rendered.planes if planes is None else planes
        if w.occupancy > 0:
            logits = self.inside_logits(planes, batch["occupancy_points"])
            terms["occupancy"] = w.occupancy * F.binary_cross_entropy_with_logits(logits, batch["occupancy_inside"])
        if w.point_color > 0:
            terms["point_color"] = w.point_color * self.point_color_loss(planes, batch)
        if w.tv > 0:
            terms["tv"] = w.tv * losses.plane_tv(planes)
        return terms

    def point_color_loss(self, planes: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Colour MSE ([-1, 1]) at the surface points of the supervision views' foreground pixels (alpha > 0.5,
        lifted with their depth), mean over the objects (0 for one with no such pixel, so the mean over devices
        of a split batch is the batch's)."""
        synth, per_object = self.model.synthesizer, []
        for b in range(planes.shape[0]):
            depth = batch["target_depths"][b, :, 0]  # (T, S, S)
            covered = (batch["target_alphas"][b, :, 0] > 0.5) & (depth > 0)
            if not covered.any():
                per_object.append(planes[b].sum() * 0)
                continue
            points = unproject_depth(batch["target_c2w"][b], batch["target_intrinsics"][b], depth)[covered]
            colours = rearrange(batch["target_images"][b], "t c h w -> t h w c")[covered]
            per_object.append(losses.image_mse(synth.rgb(planes[b:b + 1], points), colours))
        return torch.stack(per_object).mean()

    def _render_losses(self, rendered: Rendered, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        w = self.cfg.loss
        target, alpha = batch["target_images"], batch["target_alphas"]
        terms = {"mse": w.mse * losses.image_mse(rendered.rgb, target),
                 "mask": w.mask * F.mse_loss(rendered.alpha, alpha)}
        lpips = self.lpips()
        if lpips is not None and w.lpips > 0:
            terms["lpips"] = w.lpips * lpips(rendered.rgb.flatten(0, 1).clamp(0, 1), target.flatten(0, 1))
        if rendered.regularizers is not None:  # stage 2
            terms["depth"] = w.depth * losses.masked_l1(rendered.depth, batch["target_depths"], alpha)
            terms["normal"] = w.normal * losses.normal_consistency(rendered.normal, batch["target_normals"], alpha)
            for name, value in rendered.regularizers.items():
                terms[name] = getattr(w, name) * value
        return terms

    def lpips(self):
        if self._lpips is None and self.cfg.loss.lpips > 0:
            self._lpips = metrics.load_lpips() or False  # False: looked for, not available (warned once)
        return self._lpips.to(self.device) if self._lpips else None

    def sample_generators(self, indices: Tensor) -> list[torch.Generator]:
        """The random draws (ray sample jitter) of each sample, from (seed, sample index): a resumed run repeats
        them, and a sample draws the same whichever device or batch position it lands on."""
        seeds = [int(np.random.default_rng([self.cfg.seed, int(i)]).integers(2**62)) for i in indices.tolist()]
        return [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.cfg.loss.needs_renders:
            rendered = self(batch, self.sample_generators(batch["sample_index"]))
            planes = rendered.planes
        else:  # point losses alone (occupancy, point colour): no rendering at all
            rendered, planes = None, self.planes(batch)
        terms = self.compute_losses(rendered, batch, planes)
        loss = sum(terms.values())
        # What is logged and checked is the mean over devices: the loss of the whole step's batch. Every device
        # then sees the same numbers, so a NaN on any of them stops all of them at the same step.
        shown = self.mean_over_devices({**terms, "loss": loss})
        if not torch.isfinite(shown["loss"]):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in shown.items() if k != "loss")
            raise TrainingDiverged(f"loss is {shown['loss'].item()} at step {self.global_step} ({values}); stopped. "
                                   f"The last good checkpoint is {self.last_checkpoint or 'not written yet'}; resume "
                                   "from it with a lower optim.lr or check the data")
        self.log_dict({f"train/{k}": v for k, v in shown.items() if k != "loss"}, on_step=True, on_epoch=False)
        self.log("loss", shown["loss"], prog_bar=True, on_step=True, on_epoch=False)
        if rendered is not None:
            with torch.no_grad():
                psnr = metrics.psnr(rendered.rgb.flatten(0, 1).clamp(0, 1), batch["target_images"].flatten(0, 1))
            self.log("psnr", psnr, prog_bar=True, on_step=True, on_epoch=False)
        # The step this loss belongs to (Lightning's own `step` column shifts by one after a resume).
        self.log("train/step", float(self.global_step), on_step=True, on_epoch=False)
        return loss

    @staticmethod
    def mean_over_devices(values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The values (detached) averaged over the processes of a distributed run (one all-reduce); as they are on
        one device."""
        stacked = torch.stack([v.detach().float() for v in values.values()])  # (K,)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
            stacked = stacked / torch.distributed.get_world_size()
        return dict(zip(values, stacked))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        rendered = self(batch, self.sample_generators(batch["sample_index"]))
        psnr = metrics.psnr(rendered.rgb.flatten(0, 1).clamp(0, 1), batch["target_images"].flatten(0, 1))
        self.log("val/psnr", psnr, prog_bar=True, sync_dist=True, batch_size=rendered.rgb.shape[0])
        if batch_idx == 0 and self.global_rank == 0:
            self.save_grid(batch, rendered, Path(self.cfg.output) / "images" / f"val_{self.global_step:07d}.png")

    @staticmethod
    def save_grid(batch: dict[str, Tensor], rendered: Rendered, path: Path) -> None:
        """Rows: inputs (resized), target views, renders, target alpha, rendered alpha; first object of the batch."""
        size = batch["target_images"].shape[-1]
        inputs = F.interpolate(batch["input_images"][0].float(), size=(size, size), mode="bilinear",
                               antialias=True, align_corners=False)
        rows = [inputs, batch["target_images"][0], rendered.rgb[0].clamp(0, 1),
                batch["target_alphas"][0].expand(-1, 3, -1, -1), rendered.alpha[0].expand(-1, 3, -1, -1)]
        width = max(r.shape[0] for r in rows)
        rows = [torch.cat([r.float(), torch.ones(width - r.shape[0], 3, size, size, device=r.device)]) for r in rows]
        grid = rearrange(torch.stack(rows), "r n c h w -> (r h) (n w) c")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, o.restart_steps,
                                                                         eta_min=o.lr * o.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Beside every Lightning checkpoint, the model alone as safetensors + config (what `lrmesh reconstruct`
        and `lrmesh evaluate` load)."""
        checkpoint["lrmesh_train_config"] = self.cfg.to_dict()
        if self.global_rank == 0 and isinstance(self.model, SingleViewLRM):
            save_release(self.model, Path(self.cfg.output) / "openlrm")  # OpenLRM's own layout
        elif self.global_rank == 0:
            save_model(self.model, Path(self.cfg.output) / ("stage1.safetensors" if self.model.kind == "nerf"
                                                            else "stage2.safetensors"))

