"""pipeline: train -> export -> check -> convert -> parity, driven by Hydra configs."""
