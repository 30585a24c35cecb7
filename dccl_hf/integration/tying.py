"""Keeping a tied `CompressedLMHead` on the table the model actually embeds with.

The head references its `CompressedEmbedding` directly (it is not a submodule), so when something replaces the
input embedding module in the model tree (PEFT's ``modules_to_save=["embed_tokens"]`` wraps it and trains a copy)
the head would silently keep reading the old, frozen codebook. `follow_input_embeddings` registers a forward
pre-hook that looks at the embedding's place in the tree before each call: it re-ties the head to the module
that embeds (the active trained copy, or the original when adapters are disabled), and refuses a replacement it
cannot read codes from, instead of computing logits from a table the input side no longer uses.
"""

from __future__ import annotations

from torch import nn

from dccl_hf._compat import peft_active_copy
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.integration.layer import CompressedLMHead


class _FollowInputEmbeddings:
    """Forward pre-hook of a tied head: re-tie it to whatever embeds at ``parent.<attribute>``.

    A callable object rather than a closure, so that `copy.deepcopy` of a model maps `parent` to the copy's.
    """

    def __init__(self, parent: nn.Module, attribute: str, name: str) -> None:
        self.parent = parent
        self.attribute = attribute
        self.name = name

    def __call__(self, head: CompressedLMHead, args: tuple) -> None:
        current = getattr(self.parent, self.attribute)
        if current is head.embedding:
            return
        embedding = current if isinstance(current, CompressedEmbedding) else peft_active_copy(current)
        if not isinstance(embedding, CompressedEmbedding):
            raise RuntimeError(
                f"The compressed LM head is tied to {self.name}, which is now a {type(current).__name__}: the head "
                "computes logits from the input embeddings' codes and cannot read this module. Keep a "
                "CompressedEmbedding there (model.resize_with_codes(...) re-ties the head), or call "
                "model.dequantize() before replacing it."
            )
        head.tie(embedding)


def follow_input_embeddings(model: nn.Module, head: CompressedLMHead, embedding_name: str) -> None:
    """Keep `head` tied to the module at `embedding_name` in `model`, whatever replaces it later."""
    parent_name, _, attribute = embedding_name.rpartition(".")
    head.register_forward_pre_hook(
        _FollowInputEmbeddings(model.get_submodule(parent_name), attribute, embedding_name)
    )
