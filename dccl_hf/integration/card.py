"""Model card and `push_to_hub` for compressed transformers models.

transformers' `push_to_hub` writes a generic card after `save_pretrained`; for a dccl model the wrapper
installed by `patch_push_to_hub` uploads the same checkpoint with a card that states the compression
(M, K, bits per row, ratio, reconstruction metrics) and how to load it (``import dccl_hf`` first).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.integration.config import DcclConfig
from dccl_hf.integration.model import is_compressed

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TAGS = ["dccl", "embedding-compression"]

#: Auto classes named in the usage snippet, most specific first, with the name of the `modeling_auto` mapping of
#: model class names each covers (looked up when a card is written: this module may be imported while
#: transformers is still importing `modeling_auto`).
_AUTO_CLASSES = [
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
]

_METRIC_NAMES = {
    "mean_euclidean_distance": "Mean euclidean distance ‖e − ê‖",
    "relative_squared_error": "Relative squared error Σ‖E − Ê‖² / Σ‖E‖²",
    "max_distance": "Max euclidean distance",
    "mean_cosine_similarity": "Mean cosine(e, ê)",
}


def model_card(
    model: PreTrainedModel, repo_id: str, *, base_model: str | None = None, tags: list[str] | None = None
) -> ModelCard:
    """A model card describing `model`'s compressed embeddings, with a loading snippet for `repo_id`."""
    config = model.config.quantization_config
    if not isinstance(config, DcclConfig):
        raise ValueError("model_card needs a dccl-compressed model; call model.resize_with_codes(...) first.")
    base_model = base_model or config.base_model
    extra = {"base_model_relation": "quantized"} if base_model else {}
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        tags=list(dict.fromkeys(TAGS + list(tags or []))),
        **extra,
    )
    rows = []
    for name in config.modules:
        embedding = model.get_submodule(name)
        if not isinstance(embedding, CompressedEmbedding):
            raise TypeError(f"{name} is listed as compressed but is a {type(embedding).__name__}.")
        heads = [head for head, source in config.tied_heads.items() if source == name]
        rows += [
            f"| `{name}` | {embedding.num_embeddings} × {embedding.embedding_dim} | {', '.join(heads) or '—'} |"
            f" {embedding.code_bytes:,} | {embedding.codebook_bytes:,} | {embedding.compression_ratio:.1f}× |"
        ]
    metrics = [
        f"| {_METRIC_NAMES.get(key, key)} | {value:.4g} |" for key, value in config.reconstruction.items()
    ]
    relation = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "its base model"
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"The input embeddings of {relation} stored as compositional codes (Shu & Nakayama, *Compressing Word "
        "Embeddings via Deep Compositional Code Learning*, ICLR 2018) with "
        "[dccl_hf](https://github.com/dccl-hf/dccl_hf): row *i* is the sum of M codewords, "
        "ê_i = Σ_m A_m[c_im], one chosen from each of M codebooks of K codewords.",
        "",
        "| Setting | Value |",
        "|---|---|",
        f"| Codebooks M | {config.num_codebooks} |",
        f"| Codewords per codebook K | {config.codebook_size} |",
        f"| Bits per row M·log2 K | {config.bits_per_row} |",
        f"| LM head shares the codes | {'yes' if config.shared_head else 'no'} |",
        "",
        "| Module | Rows × dim | Tied heads | Code bytes | Codebook bytes | Compression vs fp32 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if metrics:
        lines += ["Reconstruction of the original embedding rows:", "", "| Metric | Value |", "|---|---|"]
        lines += [*metrics, ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "import dccl_hf  # registers the 'dccl' quantization method with transformers: import it first",
        f"from transformers import {_auto_class(model)}",
        "",
        f'model = {_auto_class(model)}.from_pretrained("{repo_id}")',
        "```",
        "",
        "Without `import dccl_hf`, transformers does not know `quant_method: dccl` and builds the dense model; "
        "the checkpoint holds an empty placeholder under the dense embedding weight's name, so loading stops "
        "with a size-mismatch error instead of returning randomly initialised embeddings.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def patch_push_to_hub() -> None:
    """Make `PreTrainedModel.push_to_hub` upload dccl models with their model card; idempotent."""
    from transformers import PreTrainedModel  # imported late: see dccl_hf.integration

    original = PreTrainedModel.push_to_hub
    if hasattr(original, "__dccl_original__"):
        return

    @functools.wraps(original)
    def push_to_hub(
        self: PreTrainedModel, repo_id: str, *, base_model: str | None = None, **kwargs: Any
    ) -> Any:
        if not is_compressed(self):
            if base_model is not None:
                raise TypeError("base_model is only accepted for dccl-compressed models.")
            return original(self, repo_id, **kwargs)
        return push_compressed(self, repo_id, base_model=base_model, **kwargs)

    push_to_hub.__dccl_original__ = original
    PreTrainedModel.push_to_hub = push_to_hub


def push_compressed(
    model: PreTrainedModel,
    repo_id: str,
    *,
    base_model: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
) -> Any:
    """`push_to_hub` for a compressed model: checkpoint, config and the dccl model card in one commit."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        model_card(model, repo_id, base_model=base_model, tags=tags).save(Path(folder) / "README.md")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload dccl-compressed model",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def _auto_class(model: PreTrainedModel) -> str:
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for auto_class, mapping in _AUTO_CLASSES:
        if name in getattr(modeling_auto, mapping).values():
            return auto_class
    return "AutoModel"
