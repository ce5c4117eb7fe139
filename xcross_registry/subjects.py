"""Subjects: everything that can be evaluated, compared and served, behind one door.

A subject is a registered adapter version (``toys@v2``; used on another domain it is
a zero-shot baseline), a composition (``tools-x``, or a ``linear-merge`` baseline), or
a baseline (see :mod:`xcross_registry.baselines`): model-free (``popularity:tools``) or
trained and stored (``sasrec:tools@v1``; ``sasrec:tools`` is the latest).

Two steps, because loading a model takes seconds to minutes (torch, the base model,
the source adapters):

* :func:`resolve_subject` reads the registry rows alone and returns a :class:`Subject`
  record. ``evaluate``, ``recommend`` and ``serve`` resolve every name and check every
  option against it first, so a typo or a bad value is refused before anything heavy is
  imported.
* :func:`load_subject` turns a name (or a resolved record) into a
  :class:`LoadedSubject`: its scorer, data, prompt template and score function, which
  evaluation, serving and the service all use the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .baselines import BASELINES, ScoreFunction, split_baseline_name, stored_baseline
from .composition_methods import composition_method
from .data import catalogue_keys, match_items
from .errors import ModelError, NotFoundError, ValidationError
from .records import TrainingRecord
from .registry import Registry
from .scoring_modes import require_catalogue_ranker

if TYPE_CHECKING:  # pragma: no cover
    from .data import DomainData, Item
    from .fusion import LoadedFusion
    from .schema import AdapterVersion, BaselineModel, Composition
    from .scorer import Scorer
    from .templates import PromptTemplate


@dataclass(frozen=True)
class Subject:
    """What the registry records about a subject, read without loading any model.

    ``domain`` is the domain it scores: its own (the adapter's domain, a composition's
    target, a baseline's domain), or another one for a zero-shot evaluation.
    ``trained_on`` is the domain whose data trained it (``None`` for a model-free
    baseline)."""

    kind: str  # "adapter", "composition" or "baseline"
    name: str  # adapter label DOMAIN@vN, composition name, BASELINE:DOMAIN or BASELINE:DOMAIN@vN
    domain: str
    trained_on: str | None
    record: TrainingRecord | None  # None for model-free baselines
    status: str = "ready"  # an adapter's status: ready, head-only or no-head
    digest: str | None = None  # the stored artifact (None for model-free baselines)
    version: str = ""  # adapter or trained baseline label, or a composition's creation time
    base_model: str | None = None
    trainable_parameters: int = 0
    sources: tuple[str, ...] = ()
    adapter_version_id: int | None = None
    composition_id: int | None = None

    @property
    def mode(self) -> str | None:
        """The scoring mode (None for baselines and for adapters imported without a head)."""
        return self.record.mode if self.record else None

    @property
    def template(self) -> str | None:
        """The prompt template key it was trained with."""
        return self.record.template if self.record else None

    @property
    def zero_shot(self) -> bool:
        return self.trained_on is not None and self.domain != self.trained_on

    @property
    def method(self) -> str:
        """What the leaderboard groups it by: ``lora``, ``head-only``, ``zero-shot``, a
        composition method or a baseline's name."""
        if self.zero_shot:
            return "zero-shot"
        if self.record is None:
            return self.name.partition(":")[0]
        return self.record.board_method

    @property
    def board_kind(self) -> str:
        """``adapter``, ``composition`` or ``baseline``: a head-only scorer, a source used
        zero-shot and a composition method that integrates nothing are baselines."""
        if self.kind == "composition":
            return composition_method(self.record.method).subject_kind
        if self.kind == "adapter" and (self.zero_shot or self.status == "head-only"):
            return "baseline"
        return self.kind

    @property
    def board_name(self) -> str:
        return f"{self.name}:zero-shot" if self.zero_shot else self.name

    @property
    def fraction(self) -> float | None:
        """The share of the scored domain's training users it learned from (0 for a
        zero-shot use; None where nothing was trained)."""
        if self.zero_shot:
            return 0.0
        return self.record.fraction if self.record else None

    def check_scores(self) -> None:
        """Refuse an adapter imported without a scorer head: it can be an X-Cross
        source, but it cannot rank anything on its own."""
        if self.status == "no-head":
            raise ModelError(f"adapter {self.name} was imported without a scorer head; it can be "
                             "an X-Cross source but cannot score on its own")

    def check_serves(self) -> None:
        """Refuse, before loading, what cannot recommend from a history: baselines are
        measured on the leaderboard; ``recommend`` and ``serve`` need a trained scorer."""
        if self.kind == "baseline":
            raise ValidationError(f"{self.name} is a {self.method} baseline: it is evaluated on the "
                                  "leaderboard, but recommending needs an adapter or a composition")
        self.check_scores()

    def require_catalogue_ranker(self, need: str, hint: str = "") -> None:
        """Refuse, before loading, a subject whose mode cannot rank a whole catalogue
        (a mode not yet known, an imported adapter's, is checked again after the load)."""
        if self.kind == "baseline":
            return  # baselines score any candidate matrix, the catalogue too
        require_catalogue_ranker(self.name, self.mode, need, hint)


def resolve_subject(registry: Registry, name: str, *, domain: str | None = None,
                    composition_only: bool = False) -> Subject:
    """The subject called ``name``: a baseline ``NAME:DOMAIN`` (a trained one also
    ``NAME:DOMAIN@vN``), a composition, or an adapter label (``DOMAIN[@vN]``); with
    ``domain``, an adapter used on that domain."""
    baseline = split_baseline_name(name) if not composition_only else None
    if baseline is not None:
        cls, rest = baseline
        stored = stored_baseline(registry, name)  # an unknown domain or version fails here
        own = stored.domain.name if stored is not None else registry.domain(rest).name
        if domain not in (None, own):
            raise ValidationError(f"baseline {name} scores {own} only, not {domain}")
        if stored is not None:
            return _stored_baseline_subject(stored)
        return Subject(kind="baseline", name=f"{cls.name}:{own}", domain=own, trained_on=None,
                       record=None)
    row = registry.find_composition(name)
    if row is not None:
        if domain not in (None, row.target_domain.name):
            raise ValidationError(f"composition {name} scores its target {row.target_domain.name} "
                                  f"only, not {domain}")
        return _composition_subject(row)
    if composition_only:
        raise NotFoundError(f"unknown composition {name!r}")
    version = registry.adapter(name)
    if domain is not None:
        registry.domain(domain)
    return _adapter_subject(version, domain)


def baseline_subject(registry: Registry, baseline: str, name: str,
                     domain: str | None = None) -> tuple[str, str | None]:
    """(subject name, domain) of ``xreg evaluate NAME --baseline B [--domain D]``: a
    baseline of domain D or NAME (``popularity``, ``sasrec``: its latest version), or
    ``head-only``: domain NAME's newest head-only scorer, on D when given (zero-shot)."""
    if baseline in BASELINES:
        return f"{baseline}:{domain or name}", None
    if baseline == "head-only":
        return registry.head_only_adapter(name).label, domain
    raise ValidationError(f"unknown baseline {baseline!r}: use {', '.join([*BASELINES, 'head-only'])}")


def list_subjects(registry: Registry) -> list[Subject]:
    """Every composition and adapter version that can be asked for by name."""
    return ([_composition_subject(row) for row in registry.compositions()]
            + [_adapter_subject(version) for version in registry.adapters()])


def _composition_subject(row: "Composition") -> Subject:
    sources = [s.adapter for s in row.sources]
    return Subject(kind="composition", name=row.name, domain=row.target_domain.name,
                   trained_on=row.target_domain.name, record=TrainingRecord.of(row),
                   digest=row.artifact_digest, version=row.created.isoformat(),
                   base_model=sources[0].base_model.name if sources else None,
                   trainable_parameters=row.trainable_parameters,
                   sources=tuple(s.label for s in sources), composition_id=row.id)


def _stored_baseline_subject(row: "BaselineModel") -> Subject:
    return Subject(kind="baseline", name=row.label, domain=row.domain.name,
                   trained_on=row.domain.name, record=TrainingRecord.of(row),
                   digest=row.artifact_digest, version=row.label,
                   trainable_parameters=row.trainable_parameters)


def _adapter_subject(version: "AdapterVersion", domain: str | None = None) -> Subject:
    return Subject(kind="adapter", name=version.label, domain=domain or version.domain.name,
                   trained_on=version.domain.name, record=TrainingRecord.of(version),
                   status=version.status, digest=version.artifact_digest, version=version.label,
                   base_model=version.base_model.name,
                   trainable_parameters=version.trainable_parameters,
                   adapter_version_id=version.id)


@dataclass
class LoadedSubject:
    """A subject ready to score on ``subject.domain``: its scorer (``None`` for a
    baseline, whose model is inside its score function), the domain's data, the prompt template and the score function
    evaluation uses. ``name`` is what it was asked for by."""

    subject: Subject
    name: str
    data: "DomainData"
    score: ScoreFunction
    scorer: "Scorer | None" = None
    template: "PromptTemplate | None" = None
    requested_template: str | None = None
    fusion: "LoadedFusion | None" = None  # a model fused with an ID model (xcross_registry.fusion)
    # What serving derives from the model once (its catalogue's embeddings, prior and
    # index: see serving.catalogue), kept with the loaded model it belongs to.
    derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False)
    _keys: dict[str, "Item"] | None = field(default=None, init=False, repr=False)

    @property
    def domain(self) -> str:
        return self.subject.domain

    @property
    def kind(self) -> str:
        return self.subject.kind

    @property
    def digest(self) -> str | None:
        return self.subject.digest

    @property
    def version(self) -> str:
        return self.subject.version

    @property
    def board_name(self) -> str:
        """The leaderboard name: a subject scored with another prompt than it was trained
        with (``--template``) is its own row, ``toys@v1:prompt=short@1``."""
        name = self.subject.board_name
        used = self.template.key if self.template is not None else None
        if self.requested_template is None or used == self.subject.template:
            return name
        return f"{name}:prompt={used}"

    def evaluation_facts(self) -> dict[str, Any]:
        """What an evaluation row records about the subject besides its scores."""
        subject, record = self.subject, self.subject.record
        facts: dict[str, Any] = {"trainable_parameters": subject.trainable_parameters,
                                 "method": subject.method}
        if self.scorer is not None:
            # Whether the scores carry a popularity prior counted on this domain: a model
            # used zero-shot has its counts forgotten (see load_subject), so it does not.
            prior = self.scorer.item_prior is not None and not subject.zero_shot
            facts.update(template=self.template.key, mode=self.scorer.config.mode,
                         popularity_prior=prior, fraction=subject.fraction,
                         training_seed=record.seed if record else None,
                         run=record.run_brief() if record else None)
        elif record is not None:  # a trained baseline: no prompt, mode or prior
            facts.update(fraction=subject.fraction, training_seed=record.seed, run=record.run_brief())
        if subject.sources:
            facts["sources"] = list(subject.sources)
        return facts

    def positions(self) -> dict[str, int]:
        """Catalogue index of each item id (built once: requests mask their history with it)."""
        if self._positions is None:
            self._positions = {item.id: index for index, item in enumerate(self.data.items)}
        return self._positions

    def match(self, texts: Sequence[str]) -> list["Item"]:
        """Catalogue items for titles or ids (see :func:`~xcross_registry.data.match_items`),
        with the catalogue's lookup built once."""
        if self._keys is None:
            self._keys = catalogue_keys(self.data)
        return match_items(self.data, texts, self._keys)


def load_subject(registry: Registry, name: str | Subject, *, domain: str | None = None,
                 template: str | None = None, batch_size: int = 64) -> LoadedSubject:
    """The subject ``name`` (or an already resolved :class:`Subject`) loaded and ready to
    score on its domain, or on ``domain`` (an adapter zero-shot), with the template it was
    trained with or ``template`` by name. Every name and the data are checked before the
    model loads."""
    subject = name if isinstance(name, Subject) else resolve_subject(registry, name, domain=domain)
    subject.check_scores()
    data = registry.domain_data(subject.domain)  # changed or unreadable data fails before the load
    asked_as = name if isinstance(name, str) else subject.name
    if subject.kind == "baseline":
        if template is not None:
            raise ValidationError(f"--template does not apply to the {subject.method} baseline "
                                  "(no prompts)")
        baseline = BASELINES[subject.method]()
        return LoadedSubject(subject, asked_as, data,
                             baseline.score_function(registry, subject.domain, subject.digest))
    prompt = registry.domain_type(subject.domain).template_for(subject.template, template)
    if subject.kind == "composition":
        from .composer import load_composition

        scorer, _ = load_composition(registry, subject.name)
    else:
        from .adapters import load_scorer

        scorer, _ = load_scorer(registry, subject.name)
    if subject.zero_shot and scorer.item_prior is not None:
        # Popularity counted on the domain it was trained on says nothing about this one's
        # items, even where their ids happen to be equal.
        scorer.item_prior.forget_counts()
    from .scoring import score_candidates

    def score(data: "DomainData", split: str, users: Sequence[int], matrix, progress=None):
        return score_candidates(scorer, data, prompt, split, matrix, users, batch_size=batch_size,
                                progress=progress)

    fusion = None
    if subject.record is not None and subject.record.fusion and not subject.zero_shot:
        from .fusion import fused_score_function, load_fusion

        fusion = load_fusion(registry, subject.record.fusion, data)
        score = fused_score_function(score, fusion)
    return LoadedSubject(subject, asked_as, data, score, scorer=scorer, template=prompt,
                         requested_template=template, fusion=fusion)


@dataclass(frozen=True)
class RecommendRequest:
    """A ``recommend`` call whose names, history, candidates and data have been checked."""

    subject: Subject
    reranker: Subject | None
    history: list[str]
    candidates: list[str] | None


def check_recommend(registry: Registry, name: str, history: str,
                    candidates_file: str | Path | None = None,
                    rerank: str | None = None, template: str | None = None) -> RecommendRequest:
    """Everything about a recommendation that can be wrong without loading a model."""
    titles = parse_history(history)
    candidates = read_candidates(candidates_file) if candidates_file is not None else None
    subject = resolve_subject(registry, name)
    subject.check_serves()
    if candidates is None:
        subject.require_catalogue_ranker("whole-catalogue ranking",
                                         " (use it with --rerank, or give --candidates)")
    reranker = resolve_subject(registry, rerank) if rerank else None
    if reranker is not None:
        reranker.check_serves()
    registry.domain_data(subject.domain)  # changed or unreadable data fails here
    for model in filter(None, (subject, reranker)):
        registry.domain_type(subject.domain).template_for(model.template, template)
    return RecommendRequest(subject, reranker, titles, candidates)


def parse_history(history: str) -> list[str]:
    """Item titles or ids from ``--history``: ';'-separated, oldest first."""
    titles = [part.strip() for part in history.split(";") if part.strip()]
    if not titles:
        raise ValidationError("--history needs at least one item title (separate titles with ';')")
    return titles


def read_candidates(path: str | Path) -> list[str]:
    """Candidate titles or ids, one a line, from a UTF-8 text file."""
    file = Path(path)
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except OSError as exc:
        raise ValidationError(f"cannot read candidates file {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"candidates file {file} is not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    if not lines:
        raise ValidationError(f"candidates file {file} is empty")
    return lines
