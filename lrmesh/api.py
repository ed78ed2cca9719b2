"""lrmesh's Python API: one photo, a Zero123++ grid, or posed views in; a mesh out. Load once, call many times.

    from lrmesh.api import LRMesh

    lr = LRMesh(checkpoint="instant_mesh_large.ckpt",            # None: the bundled small model
                mv_model="zero123plus-v1.2",                     # local copy of sudo-ai/zero123plus-v1.2
                mv_unet="diffusion_pytorch_model.bin")           # InstantMesh's white-background UNet
    views = lr.views("chair.jpg", steps=75, seed=42)             # background removal, recentring, Zero123++
    views.grid.save("chair_views.png")
    mesh = lr.reconstruct(views)                                 # Mesh in the model frame (z up)
    lr.export(mesh, "chair.glb")

Each step is a method of its own: `remove_background`, `prepare` (removal + recentring), `views` (photo ->
Views), `grid_views` (a Zero123++ grid or six view files -> Views), `reconstruct` (Views -> Mesh), `export`;
`photo_to_mesh` chains them. Models load on first use and stay loaded. Nothing is printed unless `say` (a
function taking one line, e.g. `print`) is given: licence notices and progress then go there / to stderr.

Frames. Views carry their cameras as the encoder's 16-number vectors (the OpenGL camera-to-world pose's first
three rows flattened, then normalised fx, fy, cx, cy) in lrmesh's world frame: z up, object at the origin
(lrmesh.cameras). Zero123++ views get Zero123++'s fixed orbit relative to the input photo (azimuths 30..330,
elevations +20 / -10, radius 4, fov 30). Meshes come back in that same model frame, z up; `export` writes them
as the reference does (its z mirror for OBJ / PLY, y up for GLB). Other sources of views (an SV3D orbit, posed
photos) enter by building a `Views` with their own cameras in this frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lrmesh.cameras import FOUR_VIEW_SUBSET, ZERO123PP_RADIUS, zero123pp_cameras
from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh
from lrmesh.io.views import blank_views
from lrmesh.photo import FOREGROUND_RATIO, U2NetMatte, default_u2net, prepare_photo, read_photo, remove_background
from lrmesh.precision import check_precision
from lrmesh.progress import Stages

DEFAULT_CHECKPOINT = "lrmesh-small.safetensors"  # bundled in lrmesh/assets (README, "Training")
DIFFUSION_EXTRA = "pip install 'lrmesh[diffusion]'"

Say = Callable[[str], None]


def resolve_device(name: str | torch.device) -> torch.device:
    """auto -> cuda when PyTorch sees one, else cpu; cuda without a device is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LrmeshError("--device cuda: no CUDA device is available to PyTorch here")
    return device


@dataclass
class Views:
    """Views of one object with their cameras: what reconstruction takes.

    Frame: cameras are encoder camera vectors in lrmesh's world frame (z up, object at the origin), see the
    module docstring.
    """

    images: Tensor  # (V, 3, 320, 320) float32 RGB in [0, 1], white background
    cameras: Tensor  # (V, 16) encoder cameras, same order as images
    grid: Image.Image | None = None  # the 640 x 960 Zero123++ grid they were split from, if any
    condition: Image.Image | None = None  # the prepared (background-free, recentred) photo they came from, if any

    @classmethod
    def zero123pp(cls, images: Tensor, grid: Image.Image | None = None, condition: Image.Image | None = None,
                  num_views: int = 6, scale: float = 1.0) -> Views:
        """Six views in Zero123++'s layout (or the reference's four-view subset 0, 2, 4, 5 of them)."""
        subset = FOUR_VIEW_SUBSET if num_views == 4 else None
        if subset is not None and images.shape[0] == 6:
            images = images[list(subset)]
        return cls(images, zero123pp_cameras(radius=ZERO123PP_RADIUS * scale, views=subset), grid, condition)


class LRMesh:
    """Loaded models and the steps from a photo to a mesh. Arguments are paths; everything is local."""

    def __init__(self, checkpoint: str | Path | None = None, config: str | Path | None = None,
                 mv_model: str | Path | None = None, mv_unet: str | Path | None = None,
                 rembg_model: str | Path | None = None, device: str | torch.device = "auto",
                 say: Say | None = None, progress: bool = False, source_size: int | None = None,
                 encoder_heads: int | None = None):
        self.checkpoint, self.config = checkpoint, config
        # OpenLRM models that are no released preset: encoder input size (v1.1) and ViT heads (v1.0)
        self.source_size, self.encoder_heads = source_size, encoder_heads
        self.mv_model, self.mv_unet, self.rembg_model = mv_model, mv_unet, rembg_model
        self.device = resolve_device(device)
        self.say, self.progress = say, progress
        self._model = self._multiview = None
        self._u2net: U2NetMatte | None | bool = False  # False: not looked for yet

    # ------------------------------------------------------------------------------------------ models
    @property
    def single_view(self) -> bool:
        """True when the checkpoint is an OpenLRM release: one photo in (`photo_mesh`), no multi-view step."""
        from lrmesh.openlrm import openlrm_files

        return self.checkpoint is not None and openlrm_files(self.checkpoint) is not None

    @property
    def model(self):
        """The reconstruction model (an official InstantMesh checkpoint, an lrmesh file, the bundled one, or an
        OpenLRM release, whose CC BY-NC notice goes to `say`)."""
        if self._model is None:
            from lrmesh.checkpoints import load_model
            from lrmesh.openlrm import load_openlrm

            with resources.as_file(resources.files("lrmesh") / "assets" / DEFAULT_CHECKPOINT) as bundled:
                path = Path(self.checkpoint) if self.checkpoint else bundled
                self._tell(f"lrmesh: loading {path}")
                if self.single_view:
                    self._model = load_openlrm(path, self.source_size, self.encoder_heads,
                                               notice=self.say).to(self.device)
                else:
                    self._model = load_model(path, self.config).to(self.device)
        return self._model

    @property
    def multiview(self):
        """Zero123++ v1.2 with InstantMesh's white-background UNet (when given), loaded from `mv_model`."""
        if self._multiview is None:
            if self.mv_model is None:
                raise LrmeshError(no_multiview_model_message())
            self._tell(f"lrmesh: loading Zero123++ from {self.mv_model}")
            try:  # diffusers and transformers are imported as the components load (the `diffusion` extra)
                from lrmesh.zero123pp.pipeline import Zero123pp

                self._multiview = Zero123pp.load(self.mv_model, self.mv_unet, self.device, say=self.say)
            except ImportError as err:
                raise LrmeshError(f"the multi-view step needs diffusers and transformers: {DIFFUSION_EXTRA} "
                                  f"({err})") from err
        return self._multiview

    @property
    def u2net(self) -> U2NetMatte | None:
        """rembg's U2-Net (`rembg_model`, $U2NET_HOME/u2net.onnx or ~/.u2net/u2net.onnx) or None without one."""
        if self._u2net is False:
            self._u2net = default_u2net(self.rembg_model)
        return self._u2net

    def check_multiview(self) -> None:
        """Fail early, before any work, when the multi-view model is not configured or its folder incomplete."""
        if self.mv_model is None:
            raise LrmeshError(no_multiview_model_message())
        from lrmesh.zero123pp.folder import check_folder

        check_folder(self.mv_model)

    # ------------------------------------------------------------------------------------------ steps
    def remove_background(self, photo: str | Path | Image.Image) -> Image.Image:
        """Photo -> RGBA: its own transparency, else U2-Net, else the plain-background matte (lrmesh.photo)."""
        return remove_background(_image(photo), self.u2net)

    def prepare(self, photo: str | Path | Image.Image, remove: bool = True,
                foreground_ratio: float = FOREGROUND_RATIO) -> Image.Image:
        """Background removal and recentring (or, with remove=False, the image as given): Zero123++'s input."""
        image = _image(photo)
        return prepare_photo(image, remove, foreground_ratio, self.u2net if remove else None)

    def views(self, photo: str | Path | Image.Image, steps: int = 75, guidance: float = 4.0, seed: int = 42,
              remove: bool = True, foreground_ratio: float = FOREGROUND_RATIO, num_views: int = 6,
              scale: float = 1.0) -> Views:
        """Photo -> six Zero123++ views with their cameras (`grid` holds the 640 x 960 image); `num_views` 4 keeps
        the reference's subset, `scale` multiplies the camera radius (reconstruct's --scale)."""
        from lrmesh.io.views import split_grid

        if steps < 1:
            raise LrmeshError(f"--steps must be at least 1, got {steps}")
        condition = self.prepare(photo, remove, foreground_ratio)
        result = self.multiview(condition, steps=steps, guidance=guidance, seed=seed, progress=self.progress)
        pixels = torch.from_numpy(np.array(result.grid)).permute(2, 0, 1).float() / 255  # (3, 960, 640)
        return Views.zero123pp(split_grid(pixels), result.grid, condition, num_views, scale)

    @staticmethod
    def grid_views(source: str | Path | Sequence[str | Path], num_views: int = 6, scale: float = 1.0) -> Views:
        """A Zero123++ grid image, a folder of six views or six view files -> Views with Zero123++ cameras."""
        from lrmesh.io.views import load_views

        return Views.zero123pp(load_views(source, num_views), num_views=num_views, scale=scale)

    def reconstruct(self, views: Views, texture: bool = False, texture_resolution: int = 1024,
                    stages: Stages | None = None, precision: str = "fp32") -> Mesh:
        """Views -> Mesh in the model frame (z up), vertex colours or a baked texture. Empty surface: an error.
        `precision` of the encoder and transformer: fp32 (reference parity), bf16, fp16 (CUDA); see
        lrmesh.precision."""
        from lrmesh.reconstruct import reconstruct

        model = self.model
        stages = stages or Stages(self.device, show=False)
        result = reconstruct(model, views.images.to(self.device), views.cameras.to(self.device), texture=texture,
                             texture_resolution=texture_resolution, stages=stages, precision=precision)
        mesh = result.mesh.to("cpu")
        if mesh.num_faces == 0:
            why = " (no view shows an object)" if len(blank_views(views.images)) == len(views.images) else ""
            raise LrmeshError(f"the model found no surface in these views{why} (empty mesh); nothing written")
        return mesh

    def photo_to_mesh(self, photo: str | Path | Image.Image, texture: bool = False, **view_options) -> tuple[Mesh, Views]:
        """Photo -> (mesh, the views it was made from); `view_options` as for `views`."""
        views = self.views(photo, **view_options)
        return self.reconstruct(views, texture=texture), views

    def photo_mesh(self, photo: str | Path, remove: bool = True, foreground_ratio: float = FOREGROUND_RATIO,
                   mesh_resolution: int | None = None, mesh_threshold: float | None = None,
                   stages: Stages | None = None, precision: str = "fp32") -> tuple[Mesh, Tensor]:
        """One photo through an OpenLRM model (`single_view`) -> (mesh in OpenLRM's world, which is the model frame:
        z up, the photo seen from -y; vertex colours; the encoder's input image (1, 3, S, S)). With `remove`, the
        background removal and recentring of lrmesh.photo first; without, OpenLRM's own preparation only.
        `precision` of the encoder and transformer as for `reconstruct`."""
        from lrmesh.single_image import cut_out_photo, load_photo, prepare_photo, reconstruct_photo

        if not self.single_view:
            raise LrmeshError(f"{self.checkpoint or 'the bundled model'} is no OpenLRM model; a photo goes through "
                              "the multi-view step (views) for it")
        pixels = cut_out_photo(photo, foreground_ratio, self.rembg_model) if remove else load_photo(photo)
        image = prepare_photo(pixels, self.model.cfg.source_size)
        check_precision(precision, self.device)
        result = reconstruct_photo(self.model, image, mesh_resolution, mesh_threshold, stages, precision)
        mesh = result.mesh.to("cpu")
        if mesh.num_faces == 0:
            raise LrmeshError("no density above the mesh threshold on the grid (empty mesh); nothing written")
        return mesh, image.cpu()

    @staticmethod
    def export(mesh: Mesh, path: str | Path, keep_coordinates: bool = False) -> list[Path]:
        """Write .obj / .glb / .ply; returns the files written, mesh first. InstantMesh meshes are written in the
        reference's orientation; `keep_coordinates` (OpenLRM meshes, as OpenLRM writes them) keeps OBJ / PLY in
        the model frame (GLB is turned to y up either way, lrmesh.io.mesh)."""
        from lrmesh.io.mesh import save_mesh

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_mesh(mesh, path, keep_coordinates=keep_coordinates)

    def _tell(self, message: str) -> None:
        if self.say is not None:
            self.say(message)


def no_multiview_model_message() -> str:
    from lrmesh.zero123pp.folder import MODEL_REPO, UNET_FILE, UNET_REPO

    return (f"a single photo needs a multi-view model first: download the Hugging Face model {MODEL_REPO} and "
            f"{UNET_FILE} from {UNET_REPO}, then pass --mv-model DIR --mv-unet FILE (or set LRMESH_MV_MODEL and "
            f"LRMESH_MV_UNET); the other way is a single-image OpenLRM model given with -c OPENLRM")


def _image(photo: str | Path | Image.Image) -> Image.Image:
    return photo if isinstance(photo, Image.Image) else read_photo(photo)


def load_inputs(sources: Sequence[str | Path], num_views: int = 6, scale: float = 1.0, orbit: str | None = None,
                elevation: float | None = None, orbit_views: int | None = None,
                cameras: str | Path | None = None) -> tuple[Views, Tensor | None]:
    """Views other than one photo -> (Views with encoder cameras in the model frame, to_world): a Zero123++ grid
    or six views; an SV3D orbit (`orbit="sv3d"`, implied by one video file: `elevation` degrees, `orbit_views`
    of its 21 frames); or a folder of posed photos with `cameras` (a transforms.json). `to_world` (4, 4) is the
    similarity from the model frame to the posed photos' own world (write the mesh with
    lrmesh.io.posed.save_world_mesh); None for the other inputs, whose meshes stay in the model frame."""
    from lrmesh.io.orbit import is_video, load_sv3d_orbit
    from lrmesh.io.posed import load_posed_photos

    sources = list(sources)
    orbit = orbit or ("sv3d" if len(sources) == 1 and is_video(sources[0]) else None)
    if orbit is None and (elevation is not None or orbit_views is not None):
        raise LrmeshError("--elevation and --orbit-views are for SV3D orbits (--orbit sv3d, or a video)")
    if (orbit or cameras) and num_views != 6:
        raise LrmeshError("--views 4 is for Zero123++ views; use --orbit-views K for an orbit")
    radius = ZERO123PP_RADIUS * scale
    if cameras:
        if orbit:
            raise LrmeshError("--cameras gives the cameras of your own photos; an SV3D orbit has its own")
        if len(sources) != 1:
            raise LrmeshError(f"--cameras takes one folder of photos, got {len(sources)} inputs")
        posed = load_posed_photos(sources[0], cameras, radius)
        return Views(posed.images, posed.cameras), posed.to_world
    if orbit:
        posed = load_sv3d_orbit(sources if len(sources) > 1 else sources[0], elevation or 0.0, radius, orbit_views)
        return Views(posed.images, posed.cameras), None
    return LRMesh.grid_views(sources if len(sources) > 1 else sources[0], num_views, scale), None
