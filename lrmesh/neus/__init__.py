"""Per-scene reconstruction (NeuS / NeRF on a multiresolution hash grid, after instant-nsr-pl), in pure PyTorch
with tiny-cuda-nn as an optional accelerator."""
