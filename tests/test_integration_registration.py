"""Tests of `dccl_hf.integration`: registration with transformers whichever package is imported first, and an
``import dccl_hf`` (and the CLI) that does not import transformers' models.

Each case runs in a fresh interpreter: what is imported, and in which order, is the point."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

REGISTERED = """
from transformers import PreTrainedModel
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
assert callable(getattr(PreTrainedModel, "resize_with_codes", None)), "resize_with_codes not added"
assert hasattr(PreTrainedModel.resize_token_embeddings, "__dccl_original__"), "resize_token_embeddings not wrapped"
assert "dccl" in AUTO_QUANTIZER_MAPPING and "dccl" in AUTO_QUANTIZATION_CONFIG_MAPPING, "quantizer not registered"
"""

NOT_YET_LOADED = """
import sys
assert "transformers.modeling_utils" not in sys.modules, "transformers' models were imported"
"""

CASES = {
    "dccl_hf first, then an auto class": f"""
import dccl_hf, dccl_hf.cli
{NOT_YET_LOADED}
from transformers import AutoModelForCausalLM
{REGISTERED}
""",
    "transformers model first": f"""
from transformers import AutoModelForCausalLM
import dccl_hf
{REGISTERED}
""",
    "dccl_hf first, then a model module": f"""
import dccl_hf
from transformers.models.bert.modeling_bert import BertModel
{REGISTERED}
from dccl_hf.integration.card import _auto_class
from transformers import BertConfig, BertForMaskedLM
config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
assert _auto_class(BertForMaskedLM(config)) == "AutoModelForMaskedLM"
""",
    "transformers package first, then dccl_hf's transformers names": f"""
import transformers
import dccl_hf
{NOT_YET_LOADED}
resize = dccl_hf.resize_with_codes
from dccl_hf import smallest_codes
{REGISTERED}
assert not any(type(finder).__name__ == "_RegisterAfterImport" for finder in sys.meta_path), "hook left installed"
""",
    "a spec lookup that imports nothing leaves the hook for the import": f"""
import importlib.util
import dccl_hf
assert importlib.util.find_spec("transformers.modeling_utils") is not None
{NOT_YET_LOADED}
from transformers import AutoModel
{REGISTERED}
assert not any(type(finder).__name__ == "_RegisterAfterImport" for finder in sys.meta_path), "hook left installed"
""",
    "an import of transformers' models that failed registers when retried": f"""
import importlib.abc, importlib.machinery, sys
import dccl_hf
class FailOnce(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    failed = False
    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers.modeling_utils" or self.failed:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        FailOnce.failed = True
        raise ImportError("a broken install, fixed before the retry")
sys.meta_path.insert(1, FailOnce())  # behind dccl_hf's hook, which asks the other finders
try:
    import transformers.modeling_utils
except ImportError as error:
    assert "broken install" in str(error)
{NOT_YET_LOADED}
import transformers.modeling_utils
{REGISTERED}
""",
    "a failing registration warns and leaves transformers importable": f"""
import warnings
import dccl_hf
import dccl_hf.integration.quantizer as quantizer
{NOT_YET_LOADED}
def moved():
    raise AttributeError("PreTrainedModel has no attribute 'push_to_hub'")
quantizer.register = moved
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from transformers import PreTrainedModel
assert any("dccl_hf could not register with transformers" in str(w.message) for w in caught), caught
""",
}


@pytest.mark.parametrize("case", CASES)
def test_registration_in_any_import_order(case: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CASES[case])], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_unknown_attribute_is_an_attribute_error() -> None:
    import dccl_hf

    with pytest.raises(AttributeError, match="no attribute 'resize_with_code'"):
        dccl_hf.resize_with_code  # noqa: B018
    assert {"resize_with_codes", "smallest_codes", "compress"} <= set(dir(dccl_hf))
