"""dccl_hf: compress embedding tables with compositional codes, the Hugging Face way."""

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.packing import pack_codes, unpack_codes

__version__ = "0.1.0"

__all__ = ["CompressedEmbedding", "__version__", "pack_codes", "unpack_codes"]
