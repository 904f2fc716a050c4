"""Run the exported client head in the LiteRT runtime -- without TensorFlow, as on a phone.

:class:`HeadRunner` wraps ``ai_edge_litert``'s interpreter and validates what the raw interpreter does not:
image dtype and shape, and epsilon (> 0, or +inf for no noise).  This module must not import TensorFlow
(tests check it in a subprocess).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["HeadRunner"]


class HeadRunner:
    """The ``infer`` (and, if exported, ``train``) signature of a dpact head.tflite."""

    def __init__(self, path: str, *, num_threads: Optional[int] = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; make one with `python tflite/convert.py --out {path}`")
        sidecar = os.path.splitext(path)[0] + ".json"
        self.meta: Dict[str, Any] = json.load(open(sidecar)) if os.path.exists(sidecar) else {}
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()  # ready to run: what "loading the model" costs on a device
        self.signatures = self.interpreter.get_signature_list()
        if "infer" not in self.signatures:
            raise ValueError(f"{path} has no 'infer' signature (signatures: {list(self.signatures)})")
        self._infer = self.interpreter.get_signature_runner("infer")
        self._train = self.interpreter.get_signature_runner("train") if "train" in self.signatures else None
        details = self._infer.get_input_details()["image"]
        self.image_shape = tuple(int(s) for s in details["shape"][1:])

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB 0..255 (got dtype {image.dtype}); the head scales it itself")
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"image must have shape [N, {', '.join(map(str, self.image_shape))}] "
                             f"(got {list(image.shape)}); resize or crop it to the head's input size first")
        return image

    def infer(self, image: np.ndarray, epsilon: float) -> np.ndarray:
        """The noisy activation to upload; ``epsilon=math.inf`` gives the noise-free activation."""
        eps = float(epsilon)
        if math.isnan(eps) or eps <= 0:
            raise ValueError(f"epsilon must be > 0, or inf for no noise (got {epsilon})")
        return self._infer(image=self._check_image(image), epsilon=np.float32(eps))["activation"]

    def train(self, image: np.ndarray, grad_activation: np.ndarray, learning_rate: float) -> float:
        """Apply the server's dL/d(activation) to the head's conv1_1 (SGD with momentum); returns |grad|."""
        if self._train is None:
            raise ValueError("this head has no 'train' signature (exported with a cut other than conv1_1, "
                             "float16 weights, or --no-train)")
        image = self._check_image(image)
        grad = np.asarray(grad_activation, np.float32)
        if grad.shape[0] != image.shape[0] or grad.ndim != 4:
            raise ValueError(f"grad_activation must be [N, H, W, C] with N = {image.shape[0]} (got {list(grad.shape)})")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (got {learning_rate})")
        out = self._train(image=image, grad_activation=grad, learning_rate=np.float32(learning_rate))
        return float(out["grad_norm"])
