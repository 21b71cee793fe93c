"""Time to verdict, side by side in one run; writes benchmarks/results/time_to_verdict.{json,md} and prints them.

    python -m benchmarks.time_to_verdict [--repeats 3] [--zoo-rows zoo/gru_classifier,zoo/conv1d_bn] [--skip-matrix]

1. the headline, ``python -m pipeline model=mnist_cnn export=keras``: wall seconds (median of --repeats),
   each stage's seconds and the rest (start-up, imports, the report), test accuracy; and the same command
   training only (``stages=[train]``): the floor that no overlap of the conversion side could go below;
2. conversion-only time to verdict (``experiment=zoo/<row> parity.timing=false``: export, check, convert to
   keras, tensorflow and tflite, parity's comparison; and the row as it runs by default, parity timed) of
   three zoo models against the sum of the bare tool calls it wraps
   (``benchmarks/bare_conversion.py``: build, torch.onnx.export, keras3, SavedModel, TFLite converter, one
   inference per runtime), as a ratio, process against process and stages against calls;
3. the zoo matrix (``+matrix=zoo``, or --zoo-rows) wall time, serial and with 2 joblib workers.

The machine's load average is recorded before and after: timings on a loaded machine are not comparable.
"""
import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE = ("model=mnist_cnn", "export=keras")
CONVERSION_ROWS = ("zoo/resnet18", "zoo/mobilenet_v3_small", "zoo/gru_classifier")


def _run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def pipeline(*overrides: str, multirun: bool = False) -> float:
    args = [sys.executable, "-m", "pipeline", *(["-m"] if multirun else []), "print_config=false", *overrides]
    return _run(args)[0]


def _stages(run_dir: Path) -> tuple[dict, dict]:
    report = json.loads((run_dir / "report.json").read_text())
    return {k: v["seconds"] for k, v in report["stages"].items() if v["seconds"] is not None}, report


def headline(work: Path, repeats: int, root: str) -> dict:
    runs = []
    for i in range(repeats):
        run_dir = work / f"headline{i}"
        wall = pipeline(*HEADLINE, root, f"hydra.run.dir={run_dir}")
        stages, report = _stages(run_dir)
        runs.append({"wall_s": round(wall, 2), "stages_s": stages, "rest_s": round(wall - sum(stages.values()), 2),
                     "test_accuracy": report["metrics"]["test_accuracy"]})
    train_only = [round(pipeline(*HEADLINE, root, "stages=[train]", f"hydra.run.dir={work / f'train_only{i}'}"), 2)
                  for i in range(repeats)]
    return {"runs": runs, "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "train_only_wall_s": train_only, "train_only_median_wall_s": statistics.median(train_only)}


def conversion(work: Path, row: str) -> dict:
    """The row as a user runs it (parity timed) and for its verdict alone (``parity.timing=false``: outputs
    compared, no latency or throughput), against the bare calls; every process timed from outside."""
    run_dir = work / row.replace("/", "_")
    timed_wall = pipeline(f"experiment={row}", f"hydra.run.dir={run_dir}_timed")
    wall = pipeline(f"experiment={row}", "parity.timing=false", f"hydra.run.dir={run_dir}")
    stages, _ = _stages(run_dir)
    bare_wall, out = _run([sys.executable, "-m", "benchmarks.bare_conversion", row])
    bare = json.loads(out.strip().splitlines()[-1])
    return {"row": row, "pipeline_timed_wall_s": round(timed_wall, 2), "pipeline_wall_s": round(wall, 2),
            "pipeline_stages_s": stages, "bare_process_s": round(bare_wall, 2), "bare_calls_s": bare["seconds"],
            "bare_total_s": bare["total_s"], "ratio_process": round(wall / bare_wall, 2),
            "ratio_timed_process": round(timed_wall / bare_wall, 2),
            "ratio_stages_to_calls": round(sum(stages.values()) / bare["total_s"], 2)}


def matrix(work: Path, rows: str | None) -> dict:
    subset = [f"experiment={rows}"] if rows else []
    common = ("+matrix=zoo", *subset, f"hydra.callbacks.sweep_summary.matrix_path={work / 'zoo.md'}")
    serial = pipeline(*common, f"hydra.sweep.dir={work / 'zoo_serial'}", multirun=True)
    parallel = pipeline(*common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        f"hydra.sweep.dir={work / 'zoo_parallel'}", multirun=True)
    return {"rows": rows or "all (conf/matrix/zoo.yaml)", "serial_s": round(serial, 1),
            "joblib_2_s": round(parallel, 1), "speedup": round(serial / parallel, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-root", default=os.environ.get("PIPELINE_MNIST_ROOT",
                                                               str(ROOT.parent / "shared" / "data" / "mnist-10k")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default=",".join(CONVERSION_ROWS), help="zoo rows for section 2")
    parser.add_argument("--zoo-rows", default=None, help="a subset of the zoo matrix for section 3 (default: all)")
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pipeline-verdict-"))
    atexit.register(shutil.rmtree, work, True)  # gigabytes of run dirs: the results are in benchmarks/results
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "load_before": [round(v, 2) for v in os.getloadavg()]}
    print(f"1/3 headline x{args.repeats} ...", flush=True)
    results["headline"] = headline(work, args.repeats, f"dataset.root={args.mnist_root}")
    print("2/3 conversion-only vs bare tool calls ...", flush=True)
    results["conversion"] = [conversion(work, row) for row in args.rows.split(",")]
    if not args.skip_matrix:
        print("3/3 zoo matrix, serial and 2 workers ...", flush=True)
        results["matrix"] = matrix(work, args.zoo_rows)
    results["load_after"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "time_to_verdict.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "time_to_verdict.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; load average (1, 5, 15 min) "
             f"{r['load_before']} before, {r['load_after']} after.", "",
             "**1. Headline `python -m pipeline model=mnist_cnn export=keras`**", "",
             "| run | wall | train | export | check | convert | parity | rest | accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, run in enumerate(r["headline"]["runs"], 1):
        s = run["stages_s"]
        lines.append(f"| {i} | {run['wall_s']:.1f} | " + " | ".join(
            f"{s.get(k, 0):.1f}" for k in ("train", "export", "check", "convert", "parity")) +
            f" | {run['rest_s']:.1f} | {run['test_accuracy']:.4f} |")
    h = r["headline"]
    lines += ["", f"Median wall: {h['median_wall_s']:.1f} s.", ""]
    if "train_only_wall_s" in h:  # results written before the floor was measured have no such key
        lines += [f"Training only (`stages=[train]`, the same start-up, imports, recipe and plots): "
                  f"{', '.join(f'{w:.1f}' for w in h['train_only_wall_s'])} s, median "
                  f"{h['train_only_median_wall_s']:.1f} s.", ""]
    lines += [
              "**2. Conversion-only time to verdict vs the bare tool calls** (keras, tensorflow, tflite; "
              "verdict: `parity.timing=false`)", "",
              "| row | pipeline, verdict (process) | its stages | bare (process) | bare calls | ratio process | "
              "ratio stages / calls | pipeline with timing (process) | ratio |", "|---" * 9 + "|"]
    for c in r["conversion"]:
        lines.append(f"| {c['row']} | {c['pipeline_wall_s']:.1f} | {sum(c['pipeline_stages_s'].values()):.1f} | "
                     f"{c['bare_process_s']:.1f} | {c['bare_total_s']:.1f} | {c['ratio_process']:.2f} | "
                     f"{c['ratio_stages_to_calls']:.2f} | {c['pipeline_timed_wall_s']:.1f} | "
                     f"{c['ratio_timed_process']:.2f} |")
    if "matrix" in r:
        x = r["matrix"]
        lines += ["", f"**3. Zoo matrix ({x['rows']})**", "", "| launcher | wall seconds |", "|---|---|",
                  f"| basic (serial) | {x['serial_s']:.1f} |", f"| joblib, n_jobs=2 | {x['joblib_2_s']:.1f} |", "",
                  f"Speed-up {x['speedup']:.2f}x.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
