"""Settings of an X-Cross composition.

They are stored next to the trained integrator weights (as JSON) so that a saved
composition can be rebuilt exactly; hence the strict ``from_dict``: a misspelt or
unknown key is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from xcross_registry.errors import ValidationError

INITS = ("streams", "mix")
INPUT_NORMS = ("none", "rms")


@dataclass
class XCrossConfig:
    """How the n source streams are integrated at the output of each transformer layer.

    For layer l with stream states h_1 … h_n, ``z = W_l · concat(h_1 … h_n)`` gives
    2n(n−1) scalars and stream m is refined to
    ``h̃_m = h_m + Σ_{m'≠m} (beta·z[m,m',0]·h_{m'} + gamma·z[m,m',1]·(h_m − h_{m'}))``.

    Attributes:
        beta: weight of the term that injects the other stream's state h_{m'}.
        gamma: weight of the term that moves h_m along its difference to h_{m'}.
        per_token: compute z for every token (True), or once per sequence from the
            attention-mask mean of each stream's states (False; fewer, smoother
            scalars, the same number of parameters).
        layers: indices (0-based) of the transformer layers that integrate; None means
            all. Streams still run in lock-step through the other layers, unmixed.
        init_std: standard deviation of the normal initialisation of every W_l. The
            default 0 starts the composition from ``init`` exactly; the gradient of W_l
            is not zero there, so training still moves it.
        init: where an untrained composition starts (the default, ``mix``, chosen on
            validation users in the issue-22 study, docs/RESULTS.md; compositions stored
            before the setting existed started from ``streams``). ``streams``: every stream is its
            source model exactly and the final states are averaged (the mix ``w``
            starts at 1/n). ``mix``: every integrating layer replaces each stream's
            state by the equal mix of the streams, ``h̃_m = (1/n) Σ_m' h_m'``, so the
            streams run as one model whose layers average the sources' outputs, the
            layer-wise counterpart of the equal-weight merge of their updates. It adds
            a trainable bias b_l to z (``z = W_l·concat(h) + b_l``), started at
            ``z[m,m',0] = 0`` and ``z[m,m',1] = −1/(n·gamma)`` (so gamma must not be 0);
            validation-based early stopping then moves away from the mix only when
            validation says so.
        input_norm: what W_l reads: ``none``, the layer outputs as they are, or ``rms``,
            each stream's state divided by its root mean square per token, so z does not
            scale with the states' magnitude. None (the default) chooses by the base:
            ``rms`` for decoders, whose layer outputs are the un-normalised residual
            stream (SmolLM2's reach 2·10⁴, and z = W·h then explodes after one Adam
            step), ``none`` for encoders, whose layer outputs are LayerNorm'd (and how
            every BERT-family composition stored before this setting scores).
    """

    beta: float = 1.0
    gamma: float = 1.0
    per_token: bool = True
    layers: list[int] | None = None
    init_std: float = 0.0
    init: str = "mix"
    input_norm: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise numbers and reject settings that cannot be used, with one clear line."""
        for name in ("beta", "gamma", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValidationError(f"X-Cross setting {name!r} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.init_std < 0:
            raise ValidationError(f"X-Cross setting 'init_std' must be >= 0, got {self.init_std!r}")
        if self.input_norm is not None and self.input_norm not in INPUT_NORMS:
            raise ValidationError(f"X-Cross setting 'input_norm' must be one of {', '.join(INPUT_NORMS)} or null, "
                                  f"got {self.input_norm!r}")
        if self.init not in INITS:
            raise ValidationError(f"X-Cross setting 'init' must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "mix" and self.gamma == 0:
            raise ValidationError("X-Cross setting init 'mix' needs gamma != 0 (the mix is made by the gamma term)")
        if not isinstance(self.per_token, bool):
            raise ValidationError(f"X-Cross setting 'per_token' must be true or false, got {self.per_token!r}")
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise ValidationError(
                    f"X-Cross setting 'layers' must be a list of layer indices >= 0 or null, got {self.layers!r}"
                )
            if not self.layers:
                raise ValidationError("X-Cross setting 'layers' is empty; use null to integrate at every layer")
            if len(set(self.layers)) != len(self.layers):
                raise ValidationError(f"X-Cross setting 'layers' repeats an index: {self.layers!r}")
            self.layers = sorted(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any] | None) -> XCrossConfig:
        """Settings stored with a composition: one stored before ``init`` existed started
        from the streams, whatever today's default is."""
        return cls.from_dict({"init": "streams", **(data or {})})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XCrossConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(
                f"unknown X-Cross setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> XCrossConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"X-Cross config is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValidationError("X-Cross config JSON must be an object")
        return cls.from_dict(data)
