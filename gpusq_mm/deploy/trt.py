"""TensorRT engines from the exported QDQ graph (INT8 + 2:4 sparse weights).

The export is TensorRT's explicit-quantization format, so the builder
needs no calibrator: ``BuilderFlag.INT8`` runs the Q/DQ-wrapped layers in
INT8 and ``BuilderFlag.SPARSE_WEIGHTS`` lets it pick sparse Tensor Core
kernels for layers whose weights are 2:4 (Ampere and newer). The dense
FP16 engine of the same file is the baseline. Which layers got sparse
kernels is read from the builder's verbose log (the lines TensorRT prints
about sparse implementations).
"""

import time
from typing import Dict, List, Optional

__all__ = ['build_engine', 'tensorrt_unavailable', 'time_engine']


def tensorrt_unavailable() -> Optional[str]:
    """Why a TensorRT engine cannot be built here (None when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'the tensorrt Python package is not installed'
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 'torch is not installed'
    if not torch.cuda.is_available():
        return 'no CUDA GPU is available'
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return (
            f'GPU {torch.cuda.get_device_name()} (sm{major}x) has no sparse '
            'Tensor Cores (Ampere or newer needed)'
        )
    return None


def _make_logger():
    """A TensorRT logger that keeps the messages about sparse kernels."""
    import tensorrt as trt

    class SparseLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.sparse: List[str] = []

        def log(self, severity, msg):
            if 'sparse' in msg.lower():
                self.sparse.append(msg)
            elif severity <= trt.ILogger.Severity.WARNING:
                print(f'[tensorrt] {msg}')

    return SparseLogger()


def build_engine(
    onnx_path: str,
    int8_sparse: bool = True,
    workspace_gb: float = 4.0,
) -> Dict:
    """Build a serialized engine of ``onnx_path``.

    Args:
        onnx_path (str): the exported graph.
        int8_sparse (bool): INT8 + sparse weights (True) or the dense
            FP16 baseline (False). Defaults to True.
        workspace_gb (float): builder workspace. Defaults to 4.

    Returns:
        dict: ``engine`` (bytes), ``sparse_log`` (TensorRT's lines about
        sparse kernels), ``build_s``.
    """
    import tensorrt as trt

    logger = _make_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, 'rb') as f:
        if not parser.parse(f.read()):
            errors = [
                str(parser.get_error(i)) for i in range(parser.num_errors)
            ]
            raise RuntimeError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(
        trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30)
    )
    config.set_flag(trt.BuilderFlag.FP16)
    if int8_sparse:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    start = time.time()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f'TensorRT failed to build {onnx_path}')
    return dict(
        engine=bytes(engine),
        sparse_log=list(logger.sparse),
        build_s=time.time() - start,
    )


def time_engine(engine: bytes, runs: int = 100, warmup: int = 10) -> float:
    """Median latency (ms) of one inference of a serialized engine."""
    import numpy as np
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    eng = runtime.deserialize_cuda_engine(engine)
    ctx = eng.create_execution_context()
    stream = torch.cuda.Stream()
    tensors = []
    for i in range(eng.num_io_tensors):
        name = eng.get_tensor_name(i)
        shape = tuple(eng.get_tensor_shape(name))
        np_dtype = trt.nptype(eng.get_tensor_dtype(name))
        dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
        t = torch.zeros(shape, dtype=dtype, device='cuda')
        ctx.set_tensor_address(name, t.data_ptr())
        tensors.append(t)
    times = []
    for i in range(warmup + runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        ctx.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    times.sort()
    return float(times[len(times) // 2])
