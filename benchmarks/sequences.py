"""Recurrent layers of any length: convert seconds and TFLite latency by number of steps, side by side.

    python -m benchmarks.sequences [--steps 16 128 512]

A 3-layer bidirectional batch_first LSTM (8 -> 16 per direction, random weights) over [N, T, 8], converted to
the SavedModel and TFLite (``export=[tflite]``) at each number of steps: up to 128 steps keras3 unrolls
the recurrence, beyond it the SavedModel and TFLite hold one while loop per layer and direction
(``pipeline/converters/keras3/loop_rnn.py``). Prints, per number of steps, the two backends' convert
seconds, the TFLite and onnxruntime batch-1 latencies and TFLite's max abs error against PyTorch.
"""
import argparse
import atexit
import json
import shutil
import tempfile
from pathlib import Path

from torch import nn

from benchmarks.run import pipeline


class StackedBiLSTM(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=3, bidirectional=True, batch_first=True)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def measure(steps: int, work: Path) -> dict:
    run_dir = work / f"steps{steps}"
    pipeline("model.net._target_=benchmarks.sequences.StackedBiLSTM", "model.output=logits", "model.weights=init",
             "stages=[export,check,convert,parity]", "dataset=synthetic", f"dataset.shape=[{steps},8]",
             "dataset.samples=16", "export=[tflite]", "parity.latency_repeats=20", f"hydra.run.dir={run_dir}")
    report = json.loads((run_dir / "report.json").read_text())
    parity = {e["runtime"]: e for e in report["parity"]}
    seconds = {t: sum(a["seconds"] for a in report["targets"][t]["attempts"]) for t in ("tensorflow", "tflite")}
    return {"steps": steps, "savedmodel_s": seconds["tensorflow"], "tflite_s": seconds["tflite"],
            "tflite_ms": parity["tflite"]["latency_ms_batch1"],
            "onnxruntime_ms": parity["onnxruntime"]["latency_ms_batch1"],
            "tflite_max_abs_err": parity["tflite"]["max_abs_err"], "in_tolerance": parity["tflite"]["in_tolerance"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| steps | convert SavedModel (s) | convert TFLite (s) | TFLite b1 (ms) | onnxruntime b1 (ms) | "
             "TFLite max abs err | in parity |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['savedmodel_s']:.1f} | {r['tflite_s']:.1f} | {r['tflite_ms']:.2f} | "
              f"{r['onnxruntime_ms']:.2f} | {r['tflite_max_abs_err']:.1e} | {'yes' if r['in_tolerance'] else 'no'} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 128, 512])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-seq-"))
    atexit.register(shutil.rmtree, work, True)  # the run dirs are only measured, not kept
    rows = []
    for steps in args.steps:
        print(f"{steps} steps ...", flush=True)
        rows.append(measure(steps, work))
    print(markdown(rows))


if __name__ == "__main__":
    main()
