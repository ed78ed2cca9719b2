"""One photo in, a mesh out, with OpenLRM's single-image models (no diffusion): the pipeline behind
`lrmesh reconstruct PHOTO -c OPENLRM_FOLDER_OR_FILE`.

photo -> `cut_out_photo` (the shared background removal + recentring; skipped with `remove_background=False`,
which feeds the photo exactly as OpenLRM's own inference does) -> `prepare_photo` (OpenLRM's preprocessing) -> triplanes from the canonical source camera -> marching cubes on the activated
density with vertex colours -> optionally the turntable video volume-rendered along OpenLRM's orbit.

Output frame: OpenLRM's world, which is lrmesh's model frame: z up, the object in [-1, 1]^3, the photo taken
from the source camera at (0, -2, 0) looking along +y (image right = +x, image up = +z). OBJ and PLY files keep
these coordinates unchanged, as OpenLRM's own PLY export does, so the two open on top of each other; GLB turns
z up into glTF's y up (io/mesh.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from lrmesh.cameras import OPENLRM_ORBIT_FRAMES, openlrm_orbit, openlrm_source_camera
from lrmesh.errors import InputError, LrmeshError
from lrmesh.geometry.mesh import Mesh
from lrmesh.memory import keep_freed_memory
from lrmesh.model.single_view import SingleViewLRM
from lrmesh.photo import FOREGROUND_RATIO, default_u2net, read_photo
from lrmesh.photo import prepare_photo as prepare_photo_rgba
from lrmesh.precision import autocast, check_precision
from lrmesh.progress import Stages

# OpenLRM's inferrer renders the orbit two frames per synthesizer call (infer configs: frame_size 2) at 40 fps.
FRAMES_PER_CALL = 2
VIDEO_FPS = 40


def load_photo(path: str | Path) -> Tensor:
    """An image file -> (1, C, H, W) float32 in [0, 1], C = 4 when it has alpha, else 3 (uint8 / 255, as the
    reference reads it with Pillow)."""
    try:
        with Image.open(path) as img:
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            pixels = np.array(img.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"cannot read the photo {path}: {err}") from err
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255.0


def cut_out_photo(path: str | Path, foreground_ratio: float = FOREGROUND_RATIO,
                  rembg_model: str | Path | None = None) -> Tensor:
    """The shared single-image front end (lrmesh.photo, as for Zero123++): the photo's own alpha, else U2-Net, else
    the plain-background matte; then recentred to `foreground_ratio` -> (1, 4, H, W) RGBA in [0, 1]."""
    cut = prepare_photo_rgba(read_photo(path), True, foreground_ratio, default_u2net(rembg_model))
    return torch.from_numpy(np.array(cut.convert("RGBA"))).permute(2, 0, 1)[None] / 255.0


def prepare_photo(photo: Tensor, size: int) -> Tensor:
    """(1, 3 or 4, H, W) in [0, 1] -> the encoder input (1, 3, size, size) in [0, 1], as OpenLRM's own inference
    prepares it: RGBA composited on white with its straight alpha (rgb a + 1 - a), resized to size x size by
    bicubic interpolation with align_corners=True (the aspect ratio is not kept), clamped to [0, 1]."""
    if photo.shape[1] == 4:
        photo = photo[:, :3] * photo[:, 3:] + (1 - photo[:, 3:])
    image = F.interpolate(photo, size=(size, size), mode="bicubic", align_corners=True)
    return image.clamp(0, 1)


@dataclass
class PhotoReconstruction:
    mesh: Mesh  # OpenLRM's world frame (module docstring), vertex colours
    planes: Tensor  # (1, 3, C, 2r, 2r)


@torch.no_grad()
def reconstruct_photo(model: SingleViewLRM, image: Tensor, mesh_resolution: int | None = None,
                      mesh_threshold: float | None = None, stages: Stages | None = None,
                      precision: str = "fp32") -> PhotoReconstruction:
    """image (1, 3, S, S) from `prepare_photo` -> mesh (marching cubes on softplus(raw - 1) at
    mesh_resolution^3 over [-1, 1]^3, iso-level mesh_threshold; defaults: the model's 384 and 3.0).
    `precision` of the encoder and transformer as for InstantMesh (lrmesh.precision): fp32 keeps parity; the
    planes, the grid query and marching cubes are fp32 in every case."""
    device = next(model.parameters()).device
    stages = stages or Stages(device, show=False)
    camera = openlrm_source_camera(model.cfg.source_distance).to(device)
    with keep_freed_memory(device):  # the stages' large temporaries reuse memory (lrmesh.memory)
        stages("encode")
        with autocast(precision, device):
            tokens = model.encode(image.to(device))
            stages("transformer")
            planes = model.transformer.upsample(model.transformer_tokens(tokens, camera)).float()
        mesh = model.synthesizer.extract_mesh(planes, progress=stages, resolution=mesh_resolution,
                                              threshold=mesh_threshold)
    stages.finish()  # after the memory is handed back, so the last stage's time includes that
    return PhotoReconstruction(mesh=mesh, planes=planes)


@torch.no_grad()
def render_orbit(model: SingleViewLRM, planes: Tensor, num_frames: int | None = None,
                 resolution: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The turntable video OpenLRM exports: frames volume-rendered from the triplanes along its orbit
    (`cameras.openlrm_orbit`), two per call, at the model's render size -> (T, H, W, 3) uint8."""
    frames_total = num_frames or OPENLRM_ORBIT_FRAMES
    cameras = openlrm_orbit(model.cfg.version, frames_total, model.cfg.source_distance).to(planes.device)
    size = resolution or model.cfg.render_size
    frames = []
    for i in range(0, cameras.shape[0], FRAMES_PER_CALL):
        out = model.synthesizer.render(planes, cameras[None, i:i + FRAMES_PER_CALL], size, generator=generator)
        frames.append(out["images_rgb"][0])  # (2, 3, H, W)
    video = torch.cat(frames).permute(0, 2, 3, 1).clamp(0, 1)
    return (video * 255).to(torch.uint8).cpu()


def reconstruct_to_files(photo_path: str | Path, checkpoint: str | Path, output: Path, *, mesh_resolution: int | None,
                         mesh_threshold: float | None, remove_background: bool, video: Path | None,
                         video_frames: int | None = None, video_resolution: int | None = None,
                         source_size: int | None, encoder_heads: int | None, device: torch.device,
                         say: Callable[[str], None] | None, show_progress: bool,
                         foreground_ratio: float = FOREGROUND_RATIO,
                         rembg_model: str | Path | None = None, precision: str = "fp32") -> list[Path]:
    """The CLI's OpenLRM branch: load, prepare, reconstruct, write the mesh (and the video); -> files written.
    `say` prints progress lines and the licence notice; None when quiet."""
    from lrmesh.io.mesh import save_mesh
    from lrmesh.io.video import write_video
    from lrmesh.openlrm import load_openlrm

    if mesh_resolution is not None and mesh_resolution < 2:
        raise LrmeshError(f"--mesh-resolution must be at least 2, got {mesh_resolution}")
    check_precision(precision, device)
    notice = say
    say = say or (lambda message: None)
    photo = cut_out_photo(photo_path, foreground_ratio, rembg_model) if remove_background else load_photo(photo_path)
    say(f"lrmesh: loading {checkpoint}")
    model = load_openlrm(checkpoint, source_size=source_size, encoder_heads=encoder_heads, notice=notice).to(device)
    image = prepare_photo(photo, model.cfg.source_size)
    say(f"lrmesh: reconstructing on {device} (OpenLRM {model.cfg.version}, {model.cfg.source_size} px input)")
    stages = Stages(device, show=show_progress)
    result = reconstruct_photo(model, image, mesh_resolution, mesh_threshold, stages, precision)
    mesh = result.mesh.to("cpu")
    if mesh.num_faces == 0:
        raise LrmeshError("no density above the mesh threshold on the grid (empty mesh); nothing written")
    written = save_mesh(mesh, output, keep_coordinates=True)
    say(f"lrmesh: {mesh.num_vertices} vertices, {mesh.num_faces} faces in {stages.total_seconds:.1f} s")
    if video is not None:
        frames = render_orbit(model, result.planes, video_frames, video_resolution)
        say(f"lrmesh: rendered {frames.shape[0]} orbit frames of {frames.shape[1]} px")
        written.append(write_video(frames, video, fps=VIDEO_FPS))
    return written
