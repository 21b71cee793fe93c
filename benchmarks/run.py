"""Benchmarks, side by side in one run; writes benchmarks/results/latest.{json,md} and prints them.

    python -m benchmarks.run [--mnist-root ../shared/data/mnist-10k]

1. seed 000's recipe vs the pipeline's default train stage: seconds, accuracy and the ratio;
2. per-stage seconds of `model=mnist_cnn export=[all,deploy]` (every float and quantized target);
3. per runtime: batch-1 latency (median), batch-256 throughput, accuracy, artifact size (from that
   run's parity stage), the quantized targets' accuracy change and size against float32;
4. a 2-job sweep with the joblib launcher vs the same jobs one after another;
5. the float fallback: seed 003's MNIST MLP to tflite_int8, then again with the layer that loses most kept
   in float (``export.tflite_int8.float_fallback_top_k=1``).
"""
import argparse
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import seed000_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEP_JOB = ("model=mnist_mlp", "trainer.max_epochs=2", "export=onnx", "seed=1,2")


def pipeline(*overrides: str, multirun: bool = False) -> float:
    start = time.perf_counter()
    args = [sys.executable, "-m", "pipeline", *(["-m"] if multirun else []), "print_config=false", *overrides]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-root", default=str(ROOT.parent / "shared" / "data" / "mnist-10k"))
    args = parser.parse_args()
    root = f"dataset.root={args.mnist_root}"
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    atexit.register(shutil.rmtree, work, True)  # gigabytes of run dirs: the results are in benchmarks/results

    print("1/5 seed 000 recipe (10 epochs) ...", flush=True)
    seed = seed000_recipe.run(args.mnist_root)
    print("2/5 pipeline model=mnist_cnn export=[all,deploy] ...", flush=True)
    run_dir = work / "full"
    pipeline("model=mnist_cnn", "export=[all,deploy]", root, f"hydra.run.dir={run_dir}")
    report = json.loads((run_dir / "report.json").read_text())
    print("4/5 2-job sweep: sequential vs joblib ...", flush=True)
    sequential = pipeline(*SWEEP_JOB, root, f"hydra.sweep.dir={work / 'seq'}", multirun=True)
    parallel = pipeline(*SWEEP_JOB, root, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        f"hydra.sweep.dir={work / 'par'}", multirun=True)
    print("5/5 seed 003 MLP to tflite_int8, without and with float fallback ...", flush=True)
    pipeline("experiment=seed003_mnist_mlp", "export=tflite_int8", root, f"hydra.run.dir={work / 'mlp'}")
    pipeline(f"from_run={work / 'mlp'}", "stages=[convert,parity]", "export=tflite_int8",
             "export.tflite_int8.float_fallback_top_k=1", f"hydra.run.dir={work / 'mlp_fallback'}")
    fallback = [json.loads((work / name / "report.json").read_text()) for name in ("mlp", "mlp_fallback")]
    results = collect(seed, report, sequential, parallel)
    results["float_fallback"] = fallback_rows(fallback)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))


def collect(seed: dict, report: dict, sequential: float, parallel: float) -> dict:
    stages = {name: s["seconds"] for name, s in report["stages"].items()}
    train = {"seconds": stages["train"], "test_accuracy": report["metrics"]["test_accuracy"],
             "epochs": report["trainer"]["epochs"]}
    runtimes = [{"runtime": "torch", **_timing(report["reference"]), "metric": report["reference"]["metric"],
                 "bytes": report["artifacts"]["weights"]["bytes"]}]
    for e in report["parity"]:
        artifact = report["artifacts"].get("onnx" if e["runtime"] == "onnxruntime" else e["runtime"], {})
        runtimes.append({"runtime": e["runtime"], **_timing(e), "metric": e["metric"], "bytes": artifact.get("bytes"),
                         **{k: e[k] for k in ("metric_delta", "size_ratio", "size_ratio_to") if k in e}})
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "training": {"seed000_recipe": seed, "pipeline_default": train,
                     "time_ratio": train["seconds"] / seed["seconds"],
                     "accuracy_delta": train["test_accuracy"] - seed["test_accuracy"]},
        "stages_seconds": stages,
        "after_train_seconds": sum(v for k, v in stages.items() if k != "train"),
        "runtimes": runtimes,
        "sweep_2_jobs": {"sequential_s": sequential, "joblib_s": parallel, "speedup": sequential / parallel},
    }


def fallback_rows(reports: list[dict]) -> list[dict]:
    """tflite_int8 of the same model without and with float fallback: what keeping the worst layer in float buys."""
    rows = []
    for report in reports:
        target = report["targets"]["tflite_int8"]
        e = next(e for e in report["parity"] if e["runtime"] == "tflite_int8")
        rows.append({"float_fallback": target.get("float_fallback", []), "metric": e["metric"],
                     "metric_delta": e["metric_delta"], "top1_agreement": e["top1_agreement"],
                     "max_abs_err": e["max_abs_err"], "size_ratio": e["size_ratio"],
                     "worst_layer": (target.get("worst_layers") or [None])[0]})
    return rows


def _fallback_markdown(rows: list[dict]) -> list[str]:
    worst = rows[0]["worst_layer"] or {}
    lines = ["**5. Float fallback (seed 003 MNIST MLP, its 10 epochs, to `tflite_int8`)**", "",
             f"The layer that loses most: `{worst.get('layer')}` ({worst.get('op')}; keeping it alone in float "
             f"removes {100 * (worst.get('output_gain') or 0):.0f} % of the int8 output error on validation inputs).",
             "", "| kept in float | accuracy vs PyTorch | top-1 agreement | max abs error | vs float32 size |",
             "|---|---|---|---|---|"]
    lines += [f"| {', '.join(f'`{n}`' for n in x['float_fallback']) or 'nothing'} | {_points(x['metric_delta'])} | "
              f"{x['top1_agreement']:.4f} | {x['max_abs_err']:.3g} | {100 * x['size_ratio']:.1f} % |" for x in rows]
    return lines + [""]


def _timing(entry: dict) -> dict:
    return {"latency_ms_batch1": entry["latency_ms_batch1"], "throughput_per_s": entry["throughput_per_s"],
            "batch_size": entry["throughput_batch_size"]}


def _points(delta) -> str:
    return "" if delta is None else f"{100 * delta:+.2f} pt"


def _kib(size) -> str:
    return "" if not size else f"{size / 1024:.0f} KiB"


def _ratio(x: dict) -> str:
    return f"{100 * x['size_ratio']:.0f} % of {x['size_ratio_to']}" if x.get("size_ratio") else ""


def markdown(r: dict) -> str:
    t = r["training"]
    seed, ours = t["seed000_recipe"], t["pipeline_default"]
    lines = [f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['processor']}, {r['machine']['platform']}, "
             f"Python {r['machine']['python']}.", "",
             "**1. Training, MNIST CNN on mnist-10k (8000 train / 2000 test)**", "",
             "| recipe | epochs | seconds | test accuracy |", "|---|---|---|---|",
             f"| seed 000 (per-sample transforms, SGD, batch 64) | {seed['epochs']} | {seed['seconds']:.1f} | "
             f"{seed['test_accuracy']:.4f} |",
             f"| pipeline default (in-memory tensors, Adam + OneCycle, batch 128) | {ours['epochs']} | "
             f"{ours['seconds']:.1f} | {ours['test_accuracy']:.4f} |", "",
             f"Time ratio {t['time_ratio']:.2f} (1/{1 / t['time_ratio']:.1f}), accuracy "
             f"{t['accuracy_delta']:+.4f}. The pipeline's seconds are its whole train stage (since "
             "2026-12-05 Lightning's import, about 3 s, too; set-up, fit, test, saving).", "",
             "**2. Stage seconds, `model=mnist_cnn export=[all,deploy]`** (convert: 7 targets)", "",
             "| " + " | ".join(r["stages_seconds"]) + " | after train |", "|" + "---|" * (len(r["stages_seconds"]) + 1),
             "| " + " | ".join(f"{v:.1f}" for v in r["stages_seconds"].values()) +
             f" | {r['after_train_seconds']:.1f} |", "",
             "**3. Runtimes and targets (MNIST CNN, 2000 held-out digits)**", "",
             "| runtime | batch-1 latency (ms, median) | batch-256 throughput (/s) | accuracy | vs PyTorch | size | "
             "vs float32 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['runtime']} | {x['latency_ms_batch1']:.3f} | {x['throughput_per_s']:.0f} | {x['metric']:.4f} | "
              f"{_points(x.get('metric_delta'))} | {_kib(x.get('bytes'))} | {_ratio(x)} |" for x in r["runtimes"]]
    s = r["sweep_2_jobs"]
    lines += ["", "**4. Two-job sweep (`model=mnist_mlp trainer.max_epochs=2 seed=1,2`)**", "",
              "| launcher | wall seconds |", "|---|---|", f"| basic (sequential) | {s['sequential_s']:.1f} |",
              f"| joblib, n_jobs=2 | {s['joblib_s']:.1f} |", "", f"Speed-up {s['speedup']:.2f}x.", ""]
    if r.get("float_fallback"):
        lines += _fallback_markdown(r["float_fallback"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
