"""The sample's hand-written material, read from ``datasets/samples/source/``.

Every file there opens with a comment that says what its keys mean:

* ``kb.yaml``           the knowledge-base docs and the questions each one answers
* ``unanswerable.yaml`` questions the knowledge base cannot answer
* ``phrasings.yaml``    how users ask, how the assistant answers badly, what reviewers write
* ``fake_pii.yaml``     names, domains and public test card numbers / IBANs for the fake PII
* ``general.yaml``      material for the general instruction-following items
* ``README.template.md`` the sample's README, with ``$name`` slots the generator fills in

The names below are what the generator's code reads; the order of every list matters (a seeded
rng picks by index), so reordering a list changes the sample.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SOURCE = Path(__file__).resolve().parents[2] / "datasets" / "samples" / "source"


def _load(name):
    return yaml.safe_load((SOURCE / name).read_text(encoding="utf-8"))


def _doc(d):
    """A knowledge-base doc with every optional key filled in."""
    qa = [{"q": i["q"], "gold": i["gold"], "paras": list(i["paras"]), "follow": i.get("follow")}
          for i in d.get("qa", [])]
    return {"id": d["id"], "title": d["title"], "topic": d["topic"], "text": d["text"], "qa": qa,
            "stale_of": d.get("stale_of"), "stale": d.get("stale", {}), "pii": d.get("pii", False)}


def _unanswerable(u):
    return {"q": u["q"], "topic": u["topic"], "kb_topic": u["kb_topic"], "paras": list(u.get("paras", [])),
            "fake": u.get("fake"), "real": u.get("real")}


def build_unanswerable():
    """The fixed unanswerable questions, then one per value of each slot-filled family."""
    source = _load("unanswerable.yaml")
    items = [_unanswerable(u) for u in source["questions"]]
    for family in source["families"]:
        for value in family["values"]:
            filled = {k: v.replace("{x}", value) for k, v in family.items() if k != "values"}
            items.append(_unanswerable(filled))
    return items


KB = [_doc(d) for d in _load("kb.yaml")]

_phrasings = _load("phrasings.yaml")
LEADS = _phrasings["leads"]
TAILS = _phrasings["tails"]
PERSONAS = _phrasings["personas"]
SITUATIONS = _phrasings["situations"]
FOLLOW_LEADS = _phrasings["follow_leads"]
PII_TEMPLATES = _phrasings["pii_templates"]
PII_TEMPLATE_GROUP = _phrasings["pii_template_group"]
PLAIN_STYLES = _phrasings["plain_styles"]
PLAIN_STYLES_UNCITED = _phrasings["plain_styles_uncited"]
RUDE_STYLES = _phrasings["rude_styles"]
POLICY_VIOLATIONS = _phrasings["policy_violations"]   # kind -> sentences
POLICY_BY_TOPIC = _phrasings["policy_by_topic"]
COMMENTS = _phrasings["comments"]
POLICY_COMMENTS = _phrasings["policy_comments"]
STALE_COMMENTS = _phrasings["stale_comments"]
PII_COMMENT_TEMPLATES = _phrasings["pii_comment_templates"]
MK_PLAIN = _phrasings["mk_plain"]

_fake = _load("fake_pii.yaml")
FIRST = _fake["first_names"]
LAST = _fake["last_names"]
DOMAINS = _fake["domains"]
KNOWN_CARDS = _fake["known_cards"]
KNOWN_IBANS = _fake["known_ibans"]

_general = _load("general.yaml")
SENTENCES = _general["sentences"]
CATEGORIES = _general["categories"]
CAPITALS = _general["capitals"]
OPPOSITES = _general["opposites"]
ONE_WORD = _general["one_word"]            # question -> one-word answer
DEFINITIONS = _general["definitions"]
CONVERSIONS = _general["conversions"]      # [from unit, to unit, factor]

README_TEMPLATE = (SOURCE / "README.template.md").read_text(encoding="utf-8")


def check_kb():
    ids = [d["id"] for d in KB]
    assert len(ids) == len(set(ids)) and len(KB) >= 44, "KB ids must be unique, 44+ docs"
    for d in KB:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", d["id"]), d["id"]
        for item in d["qa"]:
            assert item["gold"] in d["text"], (d["id"], item["gold"])
            assert 1 <= len(item["paras"]) <= 2, item["q"]
        assert d["qa"] or d["stale_of"], d["id"]
        for sentence in d["stale"].values():
            assert sentence in d["text"], (d["id"], sentence)
        assert 2 <= len(d["qa"]) <= 4 or d["stale_of"], d["id"]
