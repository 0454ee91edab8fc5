"""The built-in demo world: several seeded domains whose behaviour transfers from one to another.

Real cross-domain data is scarce and large; tests and the demo need something small that still has the
property RecBase relies on: what is learned on some domains helps on others. The world has one shared
vocabulary of latent topics (space, romance, cooking, ...). Every domain (movies, books, games, news, products)
draws its items from those topics and writes readable text with real English words of the item's topics, so a
text encoder places items of the same topic close together whatever the domain.

Users follow the same rules in every domain, which is what a model pretrained on some domains can carry to an
unseen one:

- each user has a topic preference that drifts over time (from a start to an end mixture along the history);
- the next item's topic often follows the previous one through a topic transition matrix shared by all domains
  (someone who just watched a space film tends next to pick science, then technology);
- within a topic, items have a Zipf popularity.

The output is the same pair of tables as ``recbase ingest`` (``recbase/data/tables.py``), one folder per domain.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recbase.errors import UserError
from recbase.data import tables, templates

# label, nouns, adjectives — real words so that a sentence encoder groups items by topic.
TOPICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Space", ("starship", "orbit", "galaxy", "astronaut", "comet", "nebula", "rocket", "moon"),
     ("cosmic", "stellar", "lunar", "interstellar", "orbital")),
    ("Romance", ("love", "wedding", "heart", "kiss", "valentine", "bride", "sweetheart", "affair"),
     ("romantic", "tender", "passionate", "loving", "charming")),
    ("Crime", ("detective", "heist", "gangster", "murder", "police", "robbery", "mafia", "verdict"),
     ("criminal", "noir", "undercover", "deadly", "corrupt")),
    ("Cooking", ("kitchen", "recipe", "chef", "bakery", "pasta", "spice", "dessert", "grill"),
     ("delicious", "savory", "homemade", "gourmet", "spicy")),
    ("Sports", ("football", "stadium", "champion", "marathon", "tennis", "coach", "league", "goal"),
     ("athletic", "competitive", "winning", "olympic", "fast")),
    ("History", ("empire", "castle", "king", "revolution", "dynasty", "pharaoh", "knight", "chronicle"),
     ("ancient", "medieval", "royal", "historic", "imperial")),
    ("Music", ("guitar", "concert", "symphony", "song", "band", "piano", "melody", "jazz"),
     ("musical", "rhythmic", "acoustic", "melodic", "loud")),
    ("Nature", ("forest", "river", "mountain", "wildlife", "ocean", "garden", "flower", "island"),
     ("wild", "green", "natural", "blooming", "untamed")),
    ("Technology", ("robot", "computer", "software", "network", "gadget", "algorithm", "circuit", "drone"),
     ("digital", "smart", "electronic", "automated", "wireless")),
    ("Fantasy", ("dragon", "wizard", "sword", "kingdom", "elf", "spell", "quest", "castle"),
     ("magical", "enchanted", "mythic", "legendary", "mystic")),
    ("War", ("battle", "soldier", "army", "tank", "general", "siege", "frontline", "trench"),
     ("tactical", "armored", "heroic", "military", "brutal")),
    ("Comedy", ("joke", "clown", "prank", "party", "sitcom", "laugh", "blunder", "roommate"),
     ("funny", "hilarious", "silly", "quirky", "witty")),
    ("Horror", ("ghost", "zombie", "haunting", "vampire", "nightmare", "curse", "monster", "cellar"),
     ("scary", "haunted", "creepy", "bloody", "sinister")),
    ("Travel", ("journey", "passport", "voyage", "backpack", "road trip", "airport", "adventure", "map"),
     ("exotic", "distant", "scenic", "nomadic", "coastal")),
    ("Science", ("laboratory", "experiment", "physics", "chemistry", "microscope", "genome", "theory", "atom"),
     ("scientific", "quantum", "molecular", "experimental", "precise")),
    ("Art", ("painting", "gallery", "sculpture", "canvas", "portrait", "museum", "sketch", "mural"),
     ("artistic", "colorful", "abstract", "creative", "elegant")),
    ("Finance", ("money", "stock", "bank", "investor", "market", "fortune", "budget", "wall street"),
     ("financial", "wealthy", "profitable", "economic", "bullish")),
    ("Health", ("fitness", "yoga", "diet", "doctor", "wellness", "workout", "vitamin", "meditation"),
     ("healthy", "fit", "balanced", "calm", "energetic")),
    ("Family", ("parent", "child", "holiday", "home", "grandmother", "puppy", "school", "birthday"),
     ("warm", "cozy", "playful", "caring", "gentle")),
    ("Mystery", ("secret", "puzzle", "clue", "riddle", "disappearance", "labyrinth", "cipher", "enigma"),
     ("mysterious", "hidden", "puzzling", "cryptic", "strange")),
)


@dataclass(frozen=True)
class DomainSpec:
    """How one domain turns a topic-drawn item into fields of its template kind."""

    name: str
    kind: str  # a template kind of recbase/data/templates.py
    extras: tuple[str, ...] = ()  # domain-specific words (platforms, product types, sections, ...)


DOMAINS: dict[str, DomainSpec] = {
    "movies": DomainSpec("movies", "movie"),
    "books": DomainSpec("books", "book", ("A Novel", "A Memoir", "Stories", "A Guide", "Poems")),
    "games": DomainSpec("games", "game", ("PC", "PlayStation", "Switch", "Xbox", "Mobile")),
    "news": DomainSpec("news", "news", ("world", "local", "opinion", "features", "business")),
    "products": DomainSpec("products", "product", ("kit", "poster", "mug", "t-shirt", "figurine", "puzzle",
                                                   "notebook", "lamp")),
}

FIRST_NAMES = ("Ada", "Ben", "Clara", "Diego", "Elena", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kira", "Leo",
               "Maya", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara")
LAST_NAMES = ("Abbott", "Baker", "Chen", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
              "Kowalski", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Weber")
BRANDS = ("Northwind", "Acme", "Lumen", "Vertex", "Bluebird", "Oakline", "Nimbus", "Polaris")
EPOCH = 1_500_000_000  # first interaction time of the world (2017-07-14), seconds


@dataclass
class WorldConfig:
    """Knobs of the demo world; the defaults keep the whole demo pipeline within minutes on a 2-core CPU."""

    seed: int = 0  # one seed for the whole world; each domain derives its own from it and its name
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))  # which of DOMAINS to write
    items_per_domain: int = 600  # catalog size of each domain
    users_per_domain: int = 300  # users of each domain (user ids are unique per domain)
    min_history: int = 16  # shortest history; above the paper's 15-interaction filter so nobody is dropped
    mean_history: int = 32  # mean history length (geometric tail above min_history)
    max_history: int = 120  # longest history
    follow_transition: float = 0.6  # chance that the next topic follows the shared transition matrix
    zipf: float = 1.1  # popularity skew within a topic


def _domain_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def topic_transitions(seed: int) -> np.ndarray:
    """The world's topic → next-topic matrix, shared by all domains: each topic leads mostly to itself and to
    three related topics."""
    rng = np.random.default_rng([seed, 7])
    n = len(TOPICS)
    m = np.full((n, n), 0.02 / n)
    for t in range(n):
        related = rng.choice([u for u in range(n) if u != t], size=3, replace=False)
        m[t, t] += 0.35
        m[t, related] += np.array([0.3, 0.2, 0.13])
    return m / m.sum(axis=1, keepdims=True)


def _title(rng: np.random.Generator, topic: int, second: int) -> str:
    _, nouns, adjs = TOPICS[topic]
    _, nouns2, _ = TOPICS[second]
    adj = adjs[rng.integers(len(adjs))].capitalize()
    noun = nouns[rng.integers(len(nouns))].title()
    pattern = rng.integers(3)
    if pattern == 0:
        return f"The {adj} {noun}"
    if pattern == 1:
        return f"{noun} of the {nouns2[rng.integers(len(nouns2))].title()}"
    return f"{adj} {noun}: {nouns2[rng.integers(len(nouns2))].title()}"


def _fields(spec: DomainSpec, rng: np.random.Generator, topic: int, second: int, index: int) -> dict:
    """Template fields of one item: a title from its topics' words plus fields of the domain's kind."""
    label, label2 = TOPICS[topic][0], TOPICS[second][0]
    labels = [label] if second == topic else [label, label2]
    title = _title(rng, topic, second)
    nouns = TOPICS[topic][1]
    person = f"{FIRST_NAMES[rng.integers(len(FIRST_NAMES))]} {LAST_NAMES[rng.integers(len(LAST_NAMES))]}"
    extra = spec.extras[rng.integers(len(spec.extras))] if spec.extras else ""
    if spec.kind == "movie":
        year = 1960 + int(rng.integers(63))
        return {"title": f"{title} ({year})", "genres": labels}
    if spec.kind == "book":
        return {"title": f"{title}: {extra}", "authors": person, "genres": labels}
    if spec.kind == "game":
        return {"title": title, "genres": [label], "tags": [nouns[rng.integers(len(nouns))], label2],
                "specs": extra}
    if spec.kind == "news":
        a, b = rng.choice(len(nouns), size=2, replace=False)
        abstract = f"A report on the {nouns[a]} and the {nouns[b]}, with {TOPICS[second][1][0]} in focus."
        return {"title": title, "category": label.lower(), "subcategory": extra, "abstract": abstract}
    if spec.kind == "product":
        brand = BRANDS[index % len(BRANDS)]
        return {"title": f"{brand} {title} {extra}", "brand": brand, "categories": [*labels, extra]}
    raise ValueError(f"domain {spec.name}: no field recipe for template kind {spec.kind!r}")


def _catalog(spec: DomainSpec, cfg: WorldConfig, rng: np.random.Generator):
    """Items of one domain: ids, texts, primary topics and raw fields."""
    n_topics = len(TOPICS)
    primary = rng.integers(n_topics, size=cfg.items_per_domain)
    secondary = np.where(rng.random(cfg.items_per_domain) < 0.5, primary, rng.integers(n_topics,
                                                                                         size=cfg.items_per_domain))
    ids, texts, raw = [], [], {"title": [], "topic": []}
    seen_titles: set[str] = set()
    for i in range(cfg.items_per_domain):
        fields = _fields(spec, rng, int(primary[i]), int(secondary[i]), i)
        if fields["title"] in seen_titles:  # keep titles unique so collisions are the tokenizer's, not the data's
            fields["title"] = f"{fields['title']} {i}"
        seen_titles.add(fields["title"])
        ids.append(f"{spec.name[:2]}{i:05d}")
        texts.append(templates.render(spec.kind, fields))
        raw["title"].append(fields["title"])
        raw["topic"].append(TOPICS[int(primary[i])][0])
    return ids, texts, primary, raw


def _histories(cfg: WorldConfig, rng: np.random.Generator, primary: np.ndarray, transitions: np.ndarray):
    """Every user's chronological item indices and timestamps."""
    n_topics = len(TOPICS)
    by_topic = [np.flatnonzero(primary == t) for t in range(n_topics)]
    popularity = []
    for members in by_topic:
        w = 1.0 / np.arange(1, len(members) + 1) ** cfg.zipf
        popularity.append(rng.permutation(w / w.sum()) if len(members) else w)
    available = np.array([len(m) > 0 for m in by_topic])

    users = []
    for _ in range(cfg.users_per_domain):
        length = min(cfg.max_history,
                     cfg.min_history + int(rng.geometric(1.0 / max(1, cfg.mean_history - cfg.min_history + 1))))
        start = rng.dirichlet(np.full(n_topics, 0.3))
        end = rng.dirichlet(np.full(n_topics, 0.3))
        items: list[int] = []
        topic = -1
        for step in range(length):
            pref = (1 - step / length) * start + (step / length) * end
            if topic >= 0 and rng.random() < cfg.follow_transition:
                p = transitions[topic] * available
            else:
                p = pref * available
            topic = int(rng.choice(n_topics, p=p / p.sum()))
            members = by_topic[topic]
            for _attempt in range(5):  # avoid repeats, as real histories rarely repeat an item
                item = int(members[rng.choice(len(members), p=popularity[topic])])
                if item not in items:
                    break
            items.append(item)
        gaps = rng.exponential(3600 * 24, size=length).astype(np.int64) + 60
        times = EPOCH + int(rng.integers(3600 * 24 * 365)) + np.cumsum(gaps)
        users.append((items, times))
    return users


def generate_domain(name: str, cfg: WorldConfig) -> tables.DomainTables:
    """One domain of the world as unfiltered tables (the same type a reader returns)."""
    try:
        spec = DOMAINS[name]
    except KeyError:
        raise UserError(f"unknown demo domain {name!r}; known: {', '.join(DOMAINS)}") from None
    rng = _domain_rng(cfg.seed, name)
    ids, texts, primary, raw = _catalog(spec, cfg, rng)
    histories = _histories(cfg, rng, primary, topic_transitions(cfg.seed))
    user_col, item_col, ts_col = [], [], []
    for u, (items, times) in enumerate(histories):
        user_col += [f"{name[:2]}u{u:05d}"] * len(items)
        item_col += [ids[i] for i in items]
        ts_col.append(times)
    items_table = tables.make_items_table(name, ids, texts, raw)
    inter = tables.make_interactions_table(name, user_col, item_col, np.concatenate(ts_col))
    return tables.DomainTables(name, items_table, inter, tables.IngestSummary(name))


def generate_world(out_dir: str | Path, seed: int = 0, **overrides) -> list[tables.IngestSummary]:
    """Write every configured domain to ``out_dir/<domain>/{items,interactions}.parquet``; returns the summaries.

    ``overrides`` are :class:`WorldConfig` fields (e.g. ``users_per_domain=50`` for a fast test).
    """
    cfg = WorldConfig(seed=seed, **overrides)
    summaries = []
    for name in cfg.domains:
        dt = tables.finalize(generate_domain(name, cfg), min_user_interactions=15, max_history=2500)
        tables.write_domain(dt, out_dir)
        summaries.append(dt.summary)
    return summaries
