"""Intra-op thread limits for torch, onnxruntime and TensorFlow, so parallel jobs do not oversubscribe.

``threads: 0`` means: the libraries' defaults for a single run, and cores / concurrent jobs under a
parallel Hydra launcher (joblib, ray). onnxruntime takes the value per session (runtimes), TensorFlow
reads TF_NUM_INTRAOP_THREADS when it starts, torch is set here.
"""
import os

from omegaconf import DictConfig


def resolve(cfg: DictConfig) -> int:
    """The thread count this job should use (0 = library default)."""
    if int(cfg.threads) > 0:
        return int(cfg.threads)
    concurrent = _concurrent_jobs()
    return max(1, (os.cpu_count() or 1) // concurrent) if concurrent > 1 else 0


def _concurrent_jobs() -> int:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "ray_launcher.RayLauncher" in target:
        return _ray_jobs_per_machine(launcher.get("ray") or {})
    if "joblib" not in target:
        return 1
    n_jobs = int(launcher.get("n_jobs", -1))
    return (os.cpu_count() or 1) if n_jobs < 1 else n_jobs


def _ray_jobs_per_machine(ray: DictConfig) -> int:
    """Ray runs as many jobs at once on a machine as its CPUs hold jobs of ``remote.num_cpus`` (default 1)."""
    cpus = (ray.get("init") or {}).get("num_cpus") or os.cpu_count() or 1
    per_job = (ray.get("remote") or {}).get("num_cpus") or 1
    return max(1, int(cpus // per_job))


def apply(count: int) -> None:
    if count <= 0:
        return
    import torch

    torch.set_num_threads(count)
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(count)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
