"""Which batch sizes a model step runs before it reports ready: on a GPU every size a batch can have (ONNX Runtime's
CUDA provider pays 0.16-0.88 s at each new size's first run), on CPU only 1 and the preferred sizes."""

from __future__ import annotations

from conveyor_runtime.spec import BatchingSpec
from conveyor_runtime.step.op_loop import warm_up_sizes

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def test_warm_up_sizes_on_a_gpu_cover_every_size_a_batch_can_have() -> None:
    batching = BatchingSpec(maxBatchSize=32, preferredBatchSizes=[8, 16])
    assert warm_up_sizes(batching, CUDA) == list(range(1, 33))
    assert warm_up_sizes(batching, TRT) == list(range(1, 33))


def test_warm_up_sizes_on_cpu_are_one_and_the_preferred_sizes() -> None:
    assert warm_up_sizes(BatchingSpec(maxBatchSize=32, preferredBatchSizes=[16, 8]), CPU) == [1, 8, 16]
    assert warm_up_sizes(BatchingSpec(maxBatchSize=32), CPU) == [1]


def test_warm_up_sizes_without_batching_is_one_run() -> None:
    assert warm_up_sizes(BatchingSpec(maxBatchSize=0), CUDA) == [1]


def test_warm_up_sizes_of_a_large_gpu_batch_are_all_up_to_64_then_powers_of_two_and_the_largest() -> None:
    sizes = warm_up_sizes(BatchingSpec(maxBatchSize=300, preferredBatchSizes=[100]), CUDA)
    assert sizes == [*range(1, 65), 100, 128, 256, 300]
