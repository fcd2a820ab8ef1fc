"""specblock: lossless speculative decoding with block-iterative dynamic-tree drafting."""

import os

# PyTorch's OpenMP workers spin after each op and starve the BLAS threads that run the
# fp32 matrix products (target/linear.py); letting them sleep doubled fp32 decoding speed
# on the 2-core reference machine. Must be set before torch loads; a user's value wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["SPECBLOCK_SET_OMP_WAIT_POLICY"] = "1"  # lets tools tell our default from a user's choice

from specblock.api import GenerationResult, GenerationStream, SpecGenerator, TextChunk
from specblock.errors import SpecBlockError

__all__ = ["GenerationResult", "GenerationStream", "SpecGenerator", "SpecBlockError", "TextChunk"]
__version__ = "0.1.0"
