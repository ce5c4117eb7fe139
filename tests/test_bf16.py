"""``--bf16`` only where it pays: on hardware without bf16 arithmetic it warns once and
trains in float32.  The capability is faked, so both paths run on any machine."""

from __future__ import annotations

import warnings

import pytest
import torch

from test_run_records import colour_data, config, make_scorer
from xcross_registry import training
from xcross_registry.templates import DEFAULT_TEMPLATE
from xcross_registry.training import Bf16FallbackWarning, cpu_supports_bf16, train_scorer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

AVX2_FLAGS = "fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 bmi2"


@pytest.mark.parametrize("text, expected", [
    (f"processor\t: 0\nflags\t\t: {AVX2_FLAGS}\n", False),
    (f"processor\t: 0\nflags\t\t: {AVX2_FLAGS} avx512f avx512bw avx512vl\n", False),  # AVX512 without bf16
    (f"processor\t: 0\nflags\t\t: {AVX2_FLAGS} avx512f avx512_bf16\n", True),
    (f"processor\t: 0\nflags\t\t: {AVX2_FLAGS} amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3, ...)
    ("processor\t: 0\nFeatures\t: fp asimd crc32\n", False),
])
def test_cpu_capability_is_read_from_cpuinfo_flags(tmp_path, text, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_supports_bf16(cpuinfo) is expected


def test_no_cpuinfo_means_no_bf16(tmp_path):
    assert cpu_supports_bf16(tmp_path / "absent") is False


def linear_output_dtypes(scorer) -> list[torch.dtype]:
    """Record the dtype of every Linear output while training (autocast shows there)."""
    seen: list[torch.dtype] = []
    for module in scorer.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype) if scorer.training else None)
    return seen


def test_without_bf16_hardware_it_warns_and_trains_float32(tiny_base, monkeypatch):
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: False)
    scorer = make_scorer(tiny_base)
    dtypes = linear_output_dtypes(scorer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_scorer(scorer, colour_data(), DEFAULT_TEMPLATE, config(epochs=1, bf16=True))
    ours = [w for w in caught if issubclass(w.category, Bf16FallbackWarning)]
    assert len(ours) == 1 and "float32" in str(ours[0].message)
    assert result.precision == "float32" and result.run_record()["precision"] == "float32"
    assert dtypes and set(dtypes) == {torch.float32}


def test_with_bf16_hardware_it_autocasts(tiny_base, monkeypatch):
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: True)
    scorer = make_scorer(tiny_base)
    dtypes = linear_output_dtypes(scorer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Bf16FallbackWarning)
        result = train_scorer(scorer, colour_data(), DEFAULT_TEMPLATE, config(epochs=1, bf16=True))
    assert result.precision == "bfloat16" and torch.bfloat16 in dtypes


def test_cli_warns_in_one_line_and_help_says_so(xreg, synthetic_domains, tiny_base, monkeypatch):
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: False)
    done = xreg("train-adapter", "toys", "--base-model", tiny_base, "--bf16", "--max-users", "8",
                "--prefixes-per-user", "1", "--valid-users", "2", "--epochs", "1", "--json")
    assert done.exit_code == 0, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert ours == ["warning: --bf16 ignored: this CPU has no bf16 arithmetic (it would run many "
                    "times slower than float32); training in float32"]
    assert done.json()["training_config"]["run"]["precision"] == "float32"
    assert done.json()["training_config"]["training"]["bf16"] is True  # what was asked, beside what ran
    helped = xreg("train-adapter", "--help")
    assert "float32" in " ".join(helped.stdout.split())
