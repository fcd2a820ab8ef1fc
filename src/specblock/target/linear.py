"""Matrix products for decoding, routed to the fastest kernel for the device and dtype.

Decoding multiplies a few rows (one token, or a draft tree of n nodes) by large weight
matrices: the cost is reading the weights, so what matters is the bandwidth a kernel
reaches. On the 2-core AVX2 machines this project measures on (design §11), PyTorch's
fp32 `F.linear` reaches about 7 GB/s at one row, while OpenBLAS (NumPy's BLAS) on a
transposed [in, out] copy reaches 15-17 GB/s, the memory's limit. At 2-64 rows no
kernel wins everywhere (3-10 GB/s; `torch.mm(W, x.T)` is ahead at 2-4 rows but needs the
other layout, i.e. a second copy of the weights): benchmarks/results/matmul_kernels.md.
So fp32 CPU weights are kept once, transposed, and multiplied through NumPy (zero-copy
views of the same memory). Without AVX-512 BF16, half-precision CPU products cost time in
proportion to the row count (about 1.3x per extra row), so from 8 rows on (draft trees,
prefill) they are computed in fp32 on an up-cast copy. GPUs always use `F.linear`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HALF_PRECISION_UPCAST_ROWS = 8


class Linear:
    """y = x W^T + b for x of shape [M, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.bias = bias
        self.uses_blas = weight.device.type == "cpu" and weight.dtype == torch.float32
        if self.uses_blas:
            self.weight = None
            self._weight_t = weight.t().contiguous().numpy()  # [in, out]
        else:
            self.weight = weight  # [out, in]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_blas:
            if self.weight.device.type == "cpu" and x.shape[0] >= HALF_PRECISION_UPCAST_ROWS:
                bias = None if self.bias is None else self.bias.float()
                return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
            return F.linear(x, self.weight, self.bias)
        y = torch.from_numpy(np.matmul(x.contiguous().numpy(), self._weight_t))
        return y if self.bias is None else y + self.bias
