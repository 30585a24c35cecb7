"""transformers integration: `resize_with_codes`, the compressed tied LM head, and `from_pretrained` support.

``register()`` (called by ``import dccl_hf``) registers the ``"dccl"`` quantization method with transformers,
adds `PreTrainedModel.resize_with_codes`, lets `resize_token_embeddings` resize compressed embeddings and gives
`push_to_hub` a dccl model card.
"""

from dccl_hf.integration.card import model_card
from dccl_hf.integration.config import DcclConfig
from dccl_hf.integration.layer import CompressedLMHead
from dccl_hf.integration.model import resize_with_codes
from dccl_hf.integration.quantizer import DcclHfQuantizer, register

__all__ = ["CompressedLMHead", "DcclConfig", "DcclHfQuantizer", "model_card", "register", "resize_with_codes"]
