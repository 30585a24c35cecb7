"""dccl_hf: compress embedding tables with compositional codes, the Hugging Face way."""

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.budget import smallest_codes
from dccl_hf.integration import register as _register_integration
from dccl_hf.integration import resize_with_codes
from dccl_hf.learning import compress
from dccl_hf.metrics import ReconstructionReport, reconstruction_report
from dccl_hf.packing import pack_codes, unpack_codes

__version__ = "0.1.0"

__all__ = [
    "CompressedEmbedding",
    "ReconstructionReport",
    "__version__",
    "compress",
    "pack_codes",
    "reconstruction_report",
    "resize_with_codes",
    "smallest_codes",
    "unpack_codes",
]

_register_integration()
