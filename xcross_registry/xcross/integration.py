"""What the trained integrators of an X-Cross scorer do, measured and drawn.

Measured once when a composition is trained and stored with it (``xreg show --plot``
and the browser then need no model).  torch and matplotlib are imported inside the
functions: importing this module is free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..data import DomainData
    from ..scorer import Scorer
    from ..templates import PromptTemplate

MEASURED_USERS = 64


def measure_integration(scorer: "Scorer", data: "DomainData", template: "PromptTemplate", name: str,
                        sources: Sequence[str], users: int = MEASURED_USERS) -> dict[str, Any]:
    """The mean integration scalar z of an X-Cross scorer on target validation prompts,
    per integrating layer and (stream, other stream, term): which source each stream
    leans on, layer by layer (term β: take the other stream's state; term γ: move away
    from it), plus the final mixing weights."""
    import torch

    sequences = (data.valid or data.train)[:users]
    prompts = [template.render([data.items[i] for i in s.history], data.items[s.target],
                               scorer.tokenizer, scorer.config.max_length) for s in sequences]
    inputs = scorer.tokenize(prompts)
    with torch.inference_mode():
        weights = scorer.encoder.xcross.integration_weights(inputs["input_ids"].to(scorer.device),
                                                            inputs["attention_mask"].to(scorer.device))
    return {"name": name, "sources": list(sources),
            "mix": scorer.encoder.xcross.mix.detach().float().cpu().tolist(),
            "layers": [{"layer": w.layer, "mean": _json_grid(w.mean), "mean_abs": _json_grid(w.mean_abs)}
                       for w in weights]}


def _json_grid(values) -> list:
    """A tensor as nested lists with the (undefined) diagonal as None: JSON has no NaN."""
    return [[[None if math.isnan(v) else v for v in pair] for pair in row] for row in values.tolist()]


def plot_integration(summary: dict[str, Any], path: str | Path) -> Path:
    """One heatmap per term: rows are (stream ← other stream), columns are layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sources = summary["sources"]
    pairs = [(m, k) for m in range(len(sources)) for k in range(len(sources)) if m != k]
    layers = [entry["layer"] for entry in summary["layers"]]
    figure, axes = plt.subplots(1, 2, figsize=(4 + 0.6 * len(layers) * 2, 1.5 + 0.45 * len(pairs)))
    for term, (axis, title) in enumerate(zip(axes, ("β: take the other stream",
                                                     "γ: move away from it"))):
        grid = np.array([[entry["mean"][m][k][term] for entry in summary["layers"]] for m, k in pairs],
                        dtype=float)
        bound = max(float(np.nanmax(np.abs(grid))), 1e-12)
        image = axis.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        axis.set_yticks(range(len(pairs)), [f"{sources[m]} ← {sources[k]}" for m, k in pairs])
        axis.set_xlabel("layer")
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    mix = ", ".join(f"{s} {w:.2f}" for s, w in zip(sources, summary["mix"]))
    figure.suptitle(f"{summary['name']}: mean integration weight z per layer (final mix: {mix})",
                    fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
