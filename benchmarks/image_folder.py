"""dataset=image_folder against torchvision's ImageFolder + DataLoader, side by side in one run.

    python -m benchmarks.image_folder [--sizes 2000 20000] [--workers 2] [--epochs 1]

For each folder size, generated JPEG/PNG images (64x64 RGB, 10 classes) go through one training epoch
of each loader with the same workers, batch size, resize and augmentation (a random horizontal flip):
images/s into training, and the peak RSS of the process with its workers (each measured in a process
of its own, so that neither sees the other's memory). Writes benchmarks/results/image_folder.{json,md}.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLASSES, SIDE, BATCH = 10, 64, 64


def generate(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / f"class_{i % CLASSES}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((SIDE, SIDE, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"{i}.{'jpg' if i % 2 else 'png'}")


def ours(folder: Path, workers: int):
    from pipeline.datasets.image_folder import ImageFolderData

    data = ImageFolderData(path=str(folder), image_size=[SIDE, SIDE], channels=3, num_workers=workers,
                           batch_size=BATCH, val_fraction=0.0, test_fraction=0.01,
                           augment=[_flip()])
    return data.train_dataloader(), data.checked


def torchvision_reference(folder: Path, workers: int):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize([SIDE, SIDE], antialias=True), _flip(),
                            v2.ToDtype(torch.float32)])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0), lambda batch: batch


def _flip():
    from torchvision.transforms import v2

    return v2.RandomHorizontalFlip()


def measure(which: str, folder: Path, workers: int, epochs: int) -> dict:
    """One loader's images/s over ``epochs`` epochs (the workers' start included) and peak RSS."""
    loader, checked = (ours if which == "pipeline" else torchvision_reference)(folder, workers)
    images = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            images += len(checked(batch)[0])
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds),
            "peak_rss_mib": round((own + children) / 1024)}


def in_subprocess(which: str, folder: Path, workers: int, epochs: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.image_folder", "--measure", which, "--folder",
                           str(folder), "--workers", str(workers), "--epochs", str(epochs)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--measure", choices=["pipeline", "torchvision"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.folder), args.workers, args.epochs)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeline-images-") as work:
        for size in args.sizes:
            folder = Path(work) / str(size)
            print(f"generating {size} images ...", flush=True)
            generate(folder, size)
            for which in ("torchvision", "pipeline"):
                result = in_subprocess(which, folder, args.workers, args.epochs)
                rows.append({"images_in_folder": size, "loader": which, "workers": args.workers, **result})
                print(rows[-1], flush=True)
    lines = ["| images in folder | loader | workers | images/s into training | peak RSS (MiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['images_in_folder']:,} | {r['loader']} | {r['workers']} | {r['images_per_s']:,} | "
              f"{r['peak_rss_mib']:,} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_folder.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "image_folder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
