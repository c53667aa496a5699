import numpy as np
import pytest
import torch
from helpers import BF16_UNIT_ROUNDOFF, PRECISIONS
from tiny_models import TinyNet
from torch import nn

from headstart.errors import HeadstartError
from headstart.models.embedder import Embedder
from headstart.models.features import PooledFeatures
from headstart.models.preprocess import DEFAULT_PREPROCESS, normalize


class OutOfMemoryAbove(nn.Module):
    """Behaves like a GPU that runs out of memory for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.body = TinyNet().features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.body(x).mean(dim=(2, 3))


def pixels(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_embeddings_equal_a_direct_forward_pass(precision: str) -> None:
    model = TinyNet().features.eval()
    batch = pixels(6)
    vectors = Embedder(model, DEFAULT_PREPROCESS, torch.device("cpu"), precision)(batch)
    assert vectors.dtype == np.float32
    with torch.no_grad():
        direct = model(normalize(batch, DEFAULT_PREPROCESS))  # in fp32 for both precisions
    if precision == "fp32":
        torch.testing.assert_close(torch.from_numpy(vectors), direct, rtol=1e-5, atol=1e-6)
        return
    # One bf16 convolution: its inputs and weights rounded to 8 significant bits, its output
    # too; measured 0.8 roundings relative to each image's output, bounded at 4.
    vectors, direct = vectors.reshape(len(batch), -1), direct.reshape(len(batch), -1).numpy()
    error = np.linalg.norm(vectors - direct, axis=1) / np.linalg.norm(direct, axis=1)
    assert error.max() <= 4 * BF16_UNIT_ROUNDOFF and error.min() > 0, error


def test_out_of_memory_halves_the_batch_and_remembers() -> None:
    model = OutOfMemoryAbove(limit=3)
    embedder = Embedder(model, DEFAULT_PREPROCESS, torch.device("cpu"), "fp32")
    batch = pixels(10)

    vectors = embedder(batch)

    assert embedder.max_batch == 2  # 10 -> 5 -> 2
    model.limit = 10**6
    with torch.no_grad():
        expected = model(
            normalize(batch, DEFAULT_PREPROCESS).contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(torch.from_numpy(vectors), expected, rtol=1e-5, atol=1e-6)


def test_out_of_memory_for_one_image_is_a_clear_error() -> None:
    embedder = Embedder(OutOfMemoryAbove(limit=0), DEFAULT_PREPROCESS, torch.device("cpu"), "fp32")
    with pytest.raises(HeadstartError, match="single image"):
        embedder(pixels(4))


def test_compiled_model_matches_eager_and_pads_short_batches() -> None:
    model = PooledFeatures(TinyNet().features).eval()
    eager = Embedder(model, DEFAULT_PREPROCESS, torch.device("cpu"), "fp32")
    compiled = Embedder(model, DEFAULT_PREPROCESS, torch.device("cpu"), "fp32", compile=True)
    full, short = pixels(8), pixels(3)
    torch.testing.assert_close(
        torch.from_numpy(compiled(full)), torch.from_numpy(eager(full)), rtol=1e-4, atol=1e-5
    )
    out = compiled(short)  # padded to the compiled batch size, trimmed back
    assert out.shape == (3, 8)
    torch.testing.assert_close(
        torch.from_numpy(out), torch.from_numpy(eager(short)), rtol=1e-4, atol=1e-5
    )
