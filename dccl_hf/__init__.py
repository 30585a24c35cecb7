"""dccl_hf: compress embedding tables with compositional codes, the Hugging Face way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.integration import lazy_attributes, register_when_transformers_loads
from dccl_hf.keyed_vectors import CompressedKeyedVectors
from dccl_hf.learning import compress
from dccl_hf.metrics import ReconstructionReport, reconstruction_report
from dccl_hf.onnx import export_onnx
from dccl_hf.packing import pack_codes, unpack_codes

if TYPE_CHECKING:
    from dccl_hf.fidelity.budget import smallest_codes
    from dccl_hf.integration.model import init_compressed_modules, resize_with_codes

__version__ = "0.1.0"

__all__ = [
    "CompressedEmbedding",
    "CompressedKeyedVectors",
    "ReconstructionReport",
    "__version__",
    "compress",
    "export_onnx",
    "init_compressed_modules",
    "pack_codes",
    "reconstruction_report",
    "resize_with_codes",
    "smallest_codes",
    "unpack_codes",
]

#: Public names whose modules import transformers (seconds), imported on first use.
__getattr__ = lazy_attributes(
    __name__,
    {
        "init_compressed_modules": "dccl_hf.integration.model",
        "resize_with_codes": "dccl_hf.integration.model",
        "smallest_codes": "dccl_hf.fidelity.budget",
    },
)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


register_when_transformers_loads()
