"""specblock: lossless speculative decoding with block-iterative dynamic-tree drafting."""

from specblock.api import GenerationResult, GenerationStream, SpecGenerator, TextChunk
from specblock.errors import SpecBlockError

__all__ = ["GenerationResult", "GenerationStream", "SpecGenerator", "SpecBlockError", "TextChunk"]
__version__ = "0.1.0"
