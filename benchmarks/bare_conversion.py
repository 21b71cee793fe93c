"""The bare tool calls a conversion-only run of a zoo row wraps, timed one by one, in a process of its own.

    python -m benchmarks.bare_conversion zoo/resnet18

Model build (the row's constructor, BatchNorm warm-up included), ``torch.onnx.export``, the keras3
conversion (ONNX -> Keras 3) and saving model.keras, ``model.export`` to a SavedModel, TensorFlow's TFLite
converter, and one inference per runtime (torch, onnxruntime, Keras, TFLite). Prints one JSON line:
{"seconds": {call: s}, "total_s": sum, "process_s": the whole process, imports included}.
"""
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()


def main(experiment: str) -> dict:
    from pipeline import tf_env

    tf_env.prepare()  # Triton before TensorFlow, as the pipeline does
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pipeline import cli, network, schema

    root = Path(__file__).resolve().parents[1]
    schema.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(root / "conf")):
        overrides = [f"experiment={experiment}"]
        cfg = compose("config", overrides=overrides)
    cli.prepare(cfg, overrides)  # what the CLI does to a composed config (the dataset's input spec)
    data = instantiate(cfg.dataset, _convert_="all")
    data.setup("fit")
    x = data.head("test", 8)[0]
    filled = network.from_data(cfg.model.net, data.spec(), str(cfg.model.output))
    seconds, work = {}, Path(tempfile.mkdtemp(prefix="bare-"))
    atexit.register(shutil.rmtree, work, True)  # the artifacts are only timed, not kept

    def timed(name, call):
        tick = time.perf_counter()
        result = call()
        seconds[name] = round(time.perf_counter() - tick, 3)
        return result

    torch.manual_seed(0)
    net = timed("build", lambda: instantiate(network.net_config(cfg.model.net, filled), _convert_="all").eval())
    onnx_path = work / "model.onnx"
    timed("torch.onnx.export", lambda: torch.onnx.export(
        net, (x[:1],), str(onnx_path), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=int(cfg.export.opset),
        dynamo=False))

    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.converters.keras3 import build

    sample = {"input": x.numpy()}
    conversion = timed("keras3 conversion", lambda: build(onnx.load(str(onnx_path)), sample)[0])
    model = conversion.model
    timed("save model.keras", lambda: model.save(str(work / "model.keras")))
    timed("SavedModel export", lambda: model.export(str(work / "saved_model"), verbose=False))
    flatbuffer = timed("TFLite converter", lambda: tf.lite.TFLiteConverter.from_saved_model(
        str(work / "saved_model")).convert())
    keras_input = np.transpose(sample["input"], conversion.input_perms[0])
    with torch.no_grad():
        timed("torch inference", lambda: net(x))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    timed("onnxruntime inference", lambda: session.run(None, sample))
    timed("keras inference", lambda: model(keras_input))
    interpreter = Interpreter(model_content=flatbuffer)

    def tflite_once():
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], keras_input.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], keras_input)
        interpreter.invoke()

    timed("tflite inference", tflite_once)
    del keras
    return {"experiment": experiment, "seconds": seconds, "total_s": round(sum(seconds.values()), 3),
            "process_s": round(time.perf_counter() - START, 3)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
