"""Datasets, one module per ``conf/dataset/<name>.yaml``; all held in memory as tensors."""
