"""One module per stage; each exposes ``run(ctx) -> None``."""
