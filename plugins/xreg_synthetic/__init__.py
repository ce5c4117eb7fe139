"""The built-in ``synthetic`` domain plugin: small product domains with a known,
transferable signal, for demos and tests that must run in minutes on a CPU.

Each domain has its own nouns (toys: kite, robot…; tools: wrench, drill…), but every
item title also carries attributes from one vocabulary SHARED by all domains: a
brand (each brand belongs to a price tier), a colour and a theme, e.g.
``"Luxora Teal Ocean Drill"``.  Every user has a favourite tier, colour and theme
and picks items that match them far more often than chance.  So what a model learns
from titles in source domains ("the candidate that repeats the history's colour,
theme and brand tier is the one") is exactly what it needs in a target domain.

Location string: ``DOMAIN[?key=value&...]`` with DOMAIN one of toys, sports, tools,
kitchen, garden, office; e.g. ``toys`` or ``tools?seed=3&users=800&items=300``.
Options (integers, the two shares fractions):

==========  =======  ===================================================
``seed``    0        same seed → same users with the same tastes in every
                     domain (user ``u00042`` likes the same things in
                     ``toys`` and ``tools``); items and sequences also vary
``users``   1000     users in the domain (70% train, 10% valid, 20% test)
``items``   300      catalogue size (at least 60; users × items ≤ 20M)
``min_len`` 5        shortest sequence
``max_len`` 10       longest sequence (at most a third of ``items``)
``valid``   0.1      share of the users held out for validation
``test``    0.2      share of the users held out for testing (the last
                     ones); e.g. ``test=0.6`` makes a domain with few
                     training users and a test split large enough to
                     separate models (the demo's target)
==========  =======  ===================================================

Everything is deterministic given the location string.  Bad domains or options raise
:class:`~xcross_registry.errors.DataError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from xcross_registry import DataError, DomainData, DomainType, Item, PromptTemplate, UserSequence, hookimpl
from xcross_registry.plugin_helpers import fraction, non_negative_int, parse_location

NOUNS: dict[str, tuple[str, ...]] = {
    "toys": ("Kite", "Robot", "Puzzle", "Yo-Yo", "Train Set", "Doll", "Race Car", "Building Blocks",
             "Board Game", "Plush Bear", "Spinning Top", "Water Pistol", "Dollhouse", "Marble Run",
             "Action Figure", "Jigsaw", "Drum Kit", "Tea Set", "Rocking Horse", "Card Game"),
    "sports": ("Water Bottle", "Yoga Mat", "Tennis Racket", "Football", "Cycling Helmet",
               "Running Shorts", "Dumbbell Set", "Jump Rope", "Golf Glove", "Ski Goggles",
               "Swim Cap", "Gym Bag", "Knee Brace", "Resistance Band", "Basketball",
               "Hiking Poles", "Boxing Gloves", "Sweatband", "Camping Stove", "Fishing Reel"),
    "tools": ("Wrench", "Cordless Drill", "Screwdriver Set", "Hammer", "Tape Measure",
              "Utility Knife", "Socket Set", "Spirit Level", "Work Light", "Pliers",
              "Tool Box", "Hand Saw", "Stud Finder", "Clamp", "Sander", "Work Gloves",
              "Glue Gun", "Chisel Set", "Ladder", "Multimeter"),
    "kitchen": ("Frying Pan", "Chef Knife", "Cutting Board", "Kettle", "Toaster", "Mixing Bowl",
                "Spatula", "Blender", "Coffee Mug", "Lunch Box", "Teapot", "Salad Spinner",
                "Oven Mitt", "Measuring Cups", "Rolling Pin", "Colander", "Whisk", "Dinner Plate",
                "Grater", "Apron"),
    "garden": ("Watering Can", "Plant Pot", "Garden Hose", "Pruning Shears", "Rake", "Trowel",
               "Bird Feeder", "Wheelbarrow", "Garden Gnome", "Seed Tray", "Lawn Sprinkler",
               "Hedge Trimmer", "Compost Bin", "Garden Kneeler", "Solar Lantern", "Planter Box",
               "Leaf Blower", "Hose Reel", "Wind Chime", "Gardening Gloves"),
    "office": ("Notebook", "Desk Lamp", "Stapler", "Pen Set", "Backpack", "Desk Organizer",
               "Wall Calendar", "Sticky Notes", "Mouse Pad", "Binder", "Letter Tray",
               "Pencil Case", "Whiteboard", "Paper Shredder", "Label Maker", "Clipboard",
               "Bookends", "Desk Chair Cushion", "Scissors", "Planner"),
}

# The shared latent vocabulary.  Brands come in tiers; two brands per tier, so a
# model must learn that "Luxora" and "Regalis" mean the same thing to a shopper.
BRANDS_BY_TIER: tuple[tuple[str, ...], ...] = (("Thriftco", "Valumax"),
                                               ("Everyday", "Homestead"),
                                               ("Luxora", "Regalis"))
COLOURS = ("Red", "Blue", "Green", "Black", "White", "Pink", "Yellow", "Teal")
THEMES = ("Space", "Ocean", "Jungle", "Arctic", "Retro", "Neon", "Safari", "Dinosaur")

PREFERENCE_STRENGTH = 2.5  # log-odds bonus per matching attribute (tier, colour, theme)
NOISE = 0.15  # share of a user's choices made by popularity alone
MAX_CELLS = 20_000_000  # users × items
OPTIONS = {"seed": non_negative_int, "users": non_negative_int, "items": non_negative_int,
           "min_len": non_negative_int, "max_len": non_negative_int, "valid": fraction,
           "test": fraction}

TEMPLATE = PromptTemplate(
    name="synthetic",
    version=1,
    item="{title}",
    separator="; ",
    cross="Bought: {history}. Candidate: {candidate}",
    query="Bought: {history}",
    document="{candidate}",
    description="Synthetic product titles, oldest first, candidate last.",
)


@dataclass(frozen=True)
class Options:
    domain: str
    seed: int = 0
    users: int = 1000
    items: int = 300
    min_len: int = 5
    max_len: int = 10
    valid: float = 0.1  # shares of the users, in user order: train, then valid, then test
    test: float = 0.2

    @classmethod
    def parse(cls, location: str) -> "Options":
        parsed = parse_location(location.strip(), OPTIONS, is_path=False)
        domain = parsed.path.lower()
        if domain not in NOUNS:
            raise DataError(f"{location}: unknown synthetic domain {domain!r} "
                            f"(known: {', '.join(NOUNS)})")
        options = cls(domain=domain, **parsed.options)
        problem = options._problem()
        if problem:
            raise DataError(f"{location}: {problem}")
        return options

    def _problem(self) -> str | None:
        if not 10 <= self.users <= 1_000_000:
            return f"users must be between 10 and 1000000, got {self.users}"
        if not 60 <= self.items <= 1_000_000:
            return f"items must be between 60 and 1000000, got {self.items}"
        if self.users * self.items > MAX_CELLS:
            # generation holds a users × items weight matrix in memory
            return f"users × items must be at most {MAX_CELLS:,}, got {self.users * self.items:,}"
        if not 2 <= self.min_len <= self.max_len:
            return f"need 2 <= min_len <= max_len, got {self.min_len} and {self.max_len}"
        if self.max_len > self.items // 3:
            return f"max_len must be at most items/3 = {self.items // 3}, got {self.max_len}"
        if self.valid + self.test > 0.9:
            return f"valid + test must leave at least 10% of users to train on, got {self.valid} + {self.test}"
        return None


def _domain_rng(options: Options, purpose: int) -> np.random.Generator:
    """A generator for one domain: its stream depends on the seed and the domain's
    name (not its place in ``NOUNS``), so adding a vocabulary changes nothing else."""
    tag = int.from_bytes(hashlib.sha256(options.domain.encode()).digest()[:4], "little")
    return np.random.default_rng([options.seed, tag, purpose])


def user_tastes(seed: int, users: int) -> np.ndarray:
    """``[users, 3]`` favourite (tier, colour, theme) per user, the same in every domain.

    Each user's row comes from one fixed-width slice of a single stream, so user k's
    tastes do not depend on how many users a domain has."""
    uniform = np.random.default_rng([seed, 0]).random((users, 3))
    sizes = np.array([len(BRANDS_BY_TIER), len(COLOURS), len(THEMES)])
    return (uniform * sizes).astype(np.int64)


def generate(options: Options) -> DomainData:
    """Catalogue and user sequences for one synthetic domain."""
    rng = _domain_rng(options, 1)
    nouns = NOUNS[options.domain]
    n = options.items
    tier = rng.integers(0, len(BRANDS_BY_TIER), n)
    brand = rng.integers(0, len(BRANDS_BY_TIER[0]), n)
    colour = rng.integers(0, len(COLOURS), n)
    theme = rng.integers(0, len(THEMES), n)
    noun = rng.integers(0, len(nouns), n)
    items = []
    for i in range(n):
        brand_name = BRANDS_BY_TIER[tier[i]][brand[i]]
        # The id makes titles that happen to coincide distinct items, as in real catalogues.
        items.append(Item(id=f"{options.domain}-{i:05d}",
                          title=f"{brand_name} {COLOURS[colour[i]]} {THEMES[theme[i]]} {nouns[noun[i]]}",
                          fields={"brand": brand_name, "colour": COLOURS[colour[i]],
                                  "theme": THEMES[theme[i]], "kind": nouns[noun[i]]}))

    # A Zipf-like popularity over a random order of the items gives a weak but real
    # popularity baseline, as in real domains.
    popularity = 1.0 / (1.0 + rng.permutation(n)) ** 0.7
    popularity /= popularity.sum()

    tastes = user_tastes(options.seed, options.users)
    matches = ((tastes[:, :1] == tier).astype(np.float64) + (tastes[:, 1:2] == colour)
               + (tastes[:, 2:3] == theme))
    preferred = popularity * np.exp(PREFERENCE_STRENGTH * matches)
    preferred /= preferred.sum(axis=1, keepdims=True)
    weights = (1 - NOISE) * preferred + NOISE * popularity

    # Plackett-Luce draws without replacement via Gumbel keys: the order of the top
    # keys is the order of purchase.
    sequence_rng = _domain_rng(options, 2)
    keys = np.log(weights) + sequence_rng.gumbel(size=weights.shape)
    ranked = np.argsort(-keys, axis=1, kind="stable")[:, :options.max_len]
    lengths = sequence_rng.integers(options.min_len, options.max_len + 1, options.users)
    sequences = [UserSequence(user=f"u{u:05d}", items=tuple(int(i) for i in ranked[u, :lengths[u]]))
                 for u in range(options.users)]

    # the train share rounded to 6 places is exactly 0.7 for the defaults, so default
    # domains keep the sizes (and fingerprints) they had before the shares were options
    n_train = round(options.users * round(1 - options.valid - options.test, 6))
    n_valid = round(options.users * options.valid)
    return DomainData(items=items, train=sequences[:n_train],
                      valid=sequences[n_train:n_train + n_valid],
                      test=sequences[n_train + n_valid:])


def load(location: str) -> DomainData:
    """Load a synthetic domain from ``DOMAIN[?key=value&...]`` (see the module docstring)."""
    return generate(Options.parse(location))


@hookimpl
def register_domains(register) -> None:
    register(DomainType(
        name="synthetic",
        load=load,
        templates=[TEMPLATE],
        description="Generated product domains (" + ", ".join(NOUNS) + ") whose users share "
                    "brand-tier, colour and theme tastes across domains.",
        locate=_recipe,
    ))


def _recipe(location: str) -> str:
    """A location is a recipe, not a path: stored as typed, even when a folder of the
    same name happens to exist in the working directory."""
    return location
