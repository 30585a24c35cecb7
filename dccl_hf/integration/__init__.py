"""transformers integration: `resize_with_codes`, the compressed tied LM head, and `from_pretrained` support.

The modules here import transformers, which takes seconds; ``import dccl_hf`` must not pay that when only the
learner, the readers or the CLI are used. So ``import dccl_hf`` calls `register_when_transformers_loads`, and the
registration (``quant_method: "dccl"`` known to `from_pretrained`, `PreTrainedModel.resize_with_codes`,
compressed `resize_token_embeddings`, the dccl model card on `push_to_hub`) runs as soon as transformers defines
`PreTrainedModel` — at once if it already has — whichever of the two packages is imported first.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

#: The transformers module that defines `PreTrainedModel`: everything registration patches exists once it has run.
TRIGGER_MODULE = "transformers.modeling_utils"
#: `quantization_config.quant_method` of models with dccl-compressed embeddings.
QUANT_METHOD = "dccl"


def register_when_transformers_loads() -> None:
    """Register with transformers now if `PreTrainedModel` is defined, else right after it is; idempotent."""
    if hasattr(sys.modules.get(TRIGGER_MODULE), "PreTrainedModel"):
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def lazy_attributes(module: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for `module` that imports each name of `sources` from the module it maps
    to on first use: for public names whose modules import transformers."""

    def attribute(name: str) -> Any:
        if name in sources:
            return getattr(importlib.import_module(sources[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return attribute


#: The integration's public names, loaded on first use.
__getattr__ = lazy_attributes(
    __name__,
    {
        "CompressedLMHead": "dccl_hf.integration.layer",
        "DcclConfig": "dccl_hf.integration.config",
        "DcclHfQuantizer": "dccl_hf.integration.quantizer",
        "model_card": "dccl_hf.integration.card",
        "register": "dccl_hf.integration.quantizer",
        "resize_with_codes": "dccl_hf.integration.model",
    },
)


def _register() -> None:
    """Register, or warn: a failure here (say, a transformers version that moved what we patch) must not make
    transformers itself fail to import, which the import hook would otherwise do."""
    try:
        from dccl_hf.integration.quantizer import register

        register()
    except Exception as error:
        logger.debug("Registration with transformers failed", exc_info=True)
        warnings.warn(
            f"dccl_hf could not register with transformers ({error!r}): compressed checkpoints will not load "
            "and model.resize_with_codes is missing. Report this with your transformers version.",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisterAfterImport:
    """Import-system finder: asked for `TRIGGER_MODULE`, it finds the module's spec the usual way and has its
    loader register right after executing it. It leaves `sys.meta_path` only once that import has succeeded, so
    neither a spec lookup that imports nothing (`importlib.util.find_spec`) nor a failed import uses it up."""

    def __init__(self) -> None:
        self._searching = False  # the import lock is held around find_spec: a plain flag is enough

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TRIGGER_MODULE or self._searching:
            return None
        self._searching = True  # the search below asks every finder, this one too
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            with contextlib.suppress(ValueError):  # already gone if something else removed it
                sys.meta_path.remove(self)
            _register()

        spec.loader.exec_module = exec_module  # this spec's own loader instance, not the loader class
        return spec
