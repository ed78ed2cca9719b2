"""The reference's mesh reconstruction (TencentARC/InstantMesh, run.py's second stage) on the CPU, timed: run by
bench/versus_reference.py with the reference's own Python environment, not lrmesh's.

    REF_PYTHON bench/reference_instantmesh.py --repo PATH/InstantMesh --config CFG.yaml --checkpoint CKPT \
        --grid GRID.png --out OUT.obj [--threads 2]

What run.py does for a Zero123++ grid: the model from `model_config`, the checkpoint's `state_dict` with the
`lrm_generator.` prefix removed (strict), `init_flexicubes_geometry(cpu, fovy=30.0)`, the grid split into six
320 x 320 views ('c (n h) (m w) -> (n m) c h w', n=3, m=2), `get_zero123plus_input_cameras(radius=4.0)`,
`forward_planes`, `extract_mesh(planes, use_texture_map=False, **infer_config)`, `save_obj`. On the instantmesh-tiny
fixture this writes `mesh_reference.obj` byte for byte.

So that it runs without a GPU or the hub, and only here (the reference's files are not changed):
  * nvdiffrast (CUDA only) is a stub module: mesh extraction touches only RasterizeCudaContext, whose
    construction does nothing; every other function raises if called;
  * cv2, imported for texture maps only, is a stub if not installed;
  * torchvision (run.py's resize) is not needed: a 640 x 960 grid's views are already 320 x 320, and other
    sizes are refused;
  * DinoWrapper builds its ViT from the config's `encoder:` block (the fixture's format: ViTConfig fields plus
    image_mean / image_std) or else facebook/dino-vitb16's sizes and processor statistics (mean = std = 0.5),
    instead of downloading; the weights come from the checkpoint.
"""

import argparse
import os
import sys
import time
import types

# ----------------------------------------------------------------------------- stubs
def _install_stubs():
    def _unavailable(name):
        def f(*a, **k):
            raise RuntimeError(f"nvdiffrast stub: {name} is not available on CPU")
        return f

    class RasterizeCudaContext:
        def __init__(self, device=None, **kwargs):
            self.device = device

    class DepthPeeler:
        def __init__(self, *a, **k):
            raise RuntimeError("nvdiffrast stub: DepthPeeler is not available on CPU")

    nv = types.ModuleType("nvdiffrast")
    nvt = types.ModuleType("nvdiffrast.torch")
    nvt.RasterizeCudaContext = RasterizeCudaContext
    nvt.RasterizeGLContext = RasterizeCudaContext
    nvt.DepthPeeler = DepthPeeler
    for n in ("rasterize", "interpolate", "antialias", "texture"):
        setattr(nvt, n, _unavailable(n))
    nv.torch = nvt
    sys.modules["nvdiffrast"] = nv
    sys.modules["nvdiffrast.torch"] = nvt

    try:
        import cv2  # noqa: F401
    except ImportError:
        import transformers.utils.import_utils  # noqa: F401  (probes find_spec('cv2') at import: do it first)
        cv2 = types.ModuleType("cv2")
        cv2.dilate = _unavailable("cv2.dilate")
        sys.modules["cv2"] = cv2


DINO_VITB16 = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    initializer_range=0.02, layer_norm_eps=1e-12, image_size=224, patch_size=16,
    num_channels=3, qkv_bias=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
)


def _patch_dino(encoder_cfg):
    from transformers import ViTConfig, ViTImageProcessor
    from src.models.encoder import dino_wrapper
    from src.models.encoder.dino import ViTModel

    enc = dict(encoder_cfg)
    mean = enc.pop("image_mean")
    std = enc.pop("image_std")

    def _build_dino(model_name, *a, **k):
        model = ViTModel(ViTConfig(**enc), add_pooling_layer=False)
        model.eval()  # as from_pretrained leaves it
        processor = ViTImageProcessor(image_mean=mean, image_std=std)
        return model, processor

    dino_wrapper.DinoWrapper._build_dino = staticmethod(_build_dino)


def _vmhwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return line.split(":", 1)[1].strip()
    return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="a checkout of TencentARC/InstantMesh")
    ap.add_argument("--config", required=True,
                    help="YAML with model_config/infer_config at top level or under `mesh:`")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--grid", required=True, help="Zero123++ multiview PNG (640 wide x 960 high)")
    ap.add_argument("--out", required=True, help="output .obj path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    _install_stubs()
    sys.path.insert(0, args.repo)

    t0 = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image
    from omegaconf import OmegaConf
    from einops import rearrange
    from src.utils.train_util import instantiate_from_config
    from src.utils.camera_util import get_zero123plus_input_cameras
    from src.utils.mesh_util import save_obj
    t_import = time.perf_counter() - t0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # run.py: seed_everything(args.seed)
    np.random.seed(args.seed)
    device = torch.device("cpu")

    config = OmegaConf.load(args.config)
    sect = config.mesh if "model_config" not in config and "mesh" in config else config
    model_config = sect.model_config
    infer_config = sect.get("infer_config", OmegaConf.create({}))
    encoder_cfg = OmegaConf.to_container(config.encoder) if "encoder" in config else DINO_VITB16
    _patch_dino(encoder_cfg)

    # ---------------------------------------------------------------- build + load
    t0 = time.perf_counter()
    model = instantiate_from_config(model_config)
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu")
    except Exception:  # lightning checkpoints with non-tensor entries
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state_dict = ckpt["state_dict"]
    state_dict = {k[14:]: v for k, v in state_dict.items() if k.startswith("lrm_generator.")}
    model.load_state_dict(state_dict, strict=True)
    del ckpt, state_dict
    model = model.to(device)
    model.init_flexicubes_geometry(device, fovy=30.0)
    model = model.eval()
    t_build = time.perf_counter() - t0

    # ---------------------------------------------------------------- inputs (as run.py)
    t0 = time.perf_counter()
    output_image = Image.open(args.grid)
    images = np.asarray(output_image, dtype=np.float32) / 255.0
    images = images[..., :3] if images.ndim == 3 and images.shape[-1] == 4 else images
    images = torch.from_numpy(images).permute(2, 0, 1).contiguous().float()  # (3, 960, 640)
    images = rearrange(images, "c (n h) (m w) -> (n m) c h w", n=3, m=2)  # (6, 3, 320, 320)
    input_cameras = get_zero123plus_input_cameras(batch_size=1, radius=4.0).to(device)
    images = images.unsqueeze(0).to(device)
    if images.shape[-2:] != (320, 320):
        raise SystemExit(f"expected a 640 x 960 grid of 320 x 320 views, got views of {tuple(images.shape[-2:])}")
    images = images.clamp(0, 1)
    t_inputs = time.perf_counter() - t0

    with torch.no_grad():
        t0 = time.perf_counter()
        planes = model.forward_planes(images, input_cameras)
        t_planes = time.perf_counter() - t0

        t0 = time.perf_counter()
        vertices, faces, vertex_colors = model.extract_mesh(planes, use_texture_map=False, **infer_config)
        t_extract = time.perf_counter() - t0

    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_obj(vertices, faces, vertex_colors, args.out)
    t_save = time.perf_counter() - t0

    print(f"threads={args.threads} vertices={len(vertices)} faces={len(faces)} out={args.out}")
    print(f"time_import_s={t_import:.3f}")
    print(f"time_build_load_s={t_build:.3f}")
    print(f"time_inputs_s={t_inputs:.3f}")
    print(f"time_forward_planes_s={t_planes:.3f}")
    print(f"time_extract_mesh_s={t_extract:.3f}")
    print(f"time_save_s={t_save:.3f}")
    print(f"time_total_s={t_build + t_inputs + t_planes + t_extract + t_save:.3f}")
    print(f"peak_rss_VmHWM={_vmhwm()}")


if __name__ == "__main__":
    main()
