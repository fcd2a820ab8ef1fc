"""specblock: lossless speculative decoding with block-iterative dynamic-tree drafting.

Importing the package changes no process-wide setting: thread and kernel choices are made
once, explicitly, when the first model loads (`specblock.target.kernels`).
"""

from specblock.api import GenerationResult, GenerationStream, SpecGenerator, TextChunk
from specblock.errors import SpecBlockError

__all__ = ["GenerationResult", "GenerationStream", "SpecGenerator", "SpecBlockError", "TextChunk"]
__version__ = "0.1.0"
