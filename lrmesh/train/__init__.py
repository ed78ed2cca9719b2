"""Training the reconstruction model: configs, data, losses, the Lightning module and the runner."""
