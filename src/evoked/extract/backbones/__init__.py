"""Built-in backbones, registered by name in `evoked.extract.registry` and imported on first use."""
