"""Plain ``torch.nn.Module`` networks, one module per ``conf/model/<name>.yaml``."""
