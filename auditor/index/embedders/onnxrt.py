"""``onnx``: any image-embedding ONNX model run with onnxruntime (input ``[n, 3, H, W]``, output ``[n, dim]``).

Input size and normalisation come from the config (``image_size``, ``resize_mode``, ``mean``, ``std``);
a model with a static input size different from ``image_size`` is refused with the size it needs. CUDA is
used when the device resolves to cuda and onnxruntime has the CUDA provider; ``precision`` is the model's
own (a float16 model gets float16 input).
"""

from __future__ import annotations

import numpy as np

from ..config import EmbedderConfig
from .base import EMBEDDERS, ResizeNormalizeEmbedder, checkpoint_file, describe_common

HOW = ("Export your image encoder to ONNX (input [batch, 3, H, W] float, output [batch, dim]) and pass "
       "--set index.embedder.checkpoint=PATH.onnx (and index.embedder.image_size/mean/std to match it)")


def session_options(threads: int):
    """onnxruntime options with an explicit CPU thread count (``index.embedder.threads``; 0: every core), one
    inter-op thread and no spin-waiting. Measured on the shipped copy descriptor (batches of 64, 2 cores, other
    jobs running): idle threads spinning between batches cost 25 % more CPU per image at 2 threads (3.20 vs
    2.56 ms) for no gain in wall time, CPU the index's pool processes and the guard's server threads need."""
    import onnxruntime as ort

    from ..threads import available_cores

    so = ort.SessionOptions()
    cores = available_cores()
    so.intra_op_num_threads = cores if threads <= 0 else min(threads, cores)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


@EMBEDDERS.register("onnx")
class OnnxEmbedder(ResizeNormalizeEmbedder):
    name = "onnx"

    def __init__(self, cfg: EmbedderConfig):
        super().__init__(cfg)
        import onnxruntime as ort

        self.checkpoint = checkpoint_file(cfg.checkpoint, "onnx embedder", HOW)
        providers = ["CPUExecutionProvider"]
        want_cuda = cfg.device.startswith("cuda") or cfg.device == "auto"
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif cfg.device.startswith("cuda"):
            raise RuntimeError(f"index.embedder.device={cfg.device!r} but onnxruntime has no CUDAExecutionProvider "
                               f"(available: {ort.get_available_providers()})")
        try:
            self.session = ort.InferenceSession(self.checkpoint, sess_options=session_options(cfg.threads),
                                                providers=providers)
        except Exception as e:
            raise RuntimeError(f"onnx embedder: cannot load {self.checkpoint} ({type(e).__name__}: {e}). {HOW}") from e
        self.providers = self.session.get_providers()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        if len(shape) != 4:
            raise RuntimeError(f"onnx embedder: input {inp.name!r} has shape {shape}, expected [n, 3, H, W]")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise RuntimeError(f"onnx embedder: input {inp.name!r} has {shape[1]} channels, expected 3")
        hw = shape[2:]
        if all(isinstance(v, int) for v in hw) and tuple(hw) != (cfg.image_size, cfg.image_size):
            raise RuntimeError(f"onnx embedder: {self.checkpoint} expects {hw[0]}x{hw[1]} input but "
                               f"index.embedder.image_size={cfg.image_size}; pass --set index.embedder.image_size={hw[0]}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        probe = self._embed(np.zeros((1, 3, cfg.image_size, cfg.image_size), dtype=np.float16))
        if probe.ndim != 2:
            raise RuntimeError(f"onnx embedder: output has shape {probe.shape}, expected [n, dim]")
        self.dim = int(probe.shape[1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.fixed_batch is not None and self.fixed_batch != len(x):
            if self.fixed_batch != 1:
                raise RuntimeError(f"onnx embedder: model has a fixed batch size {self.fixed_batch}; export it "
                                   f"with a dynamic batch axis")
            return np.concatenate([self._run(x[i:i + 1]) for i in range(len(x))], axis=0)
        return self._run(x)

    def describe(self) -> dict:
        return describe_common(self, self.checkpoint, providers=list(self.providers))
