"""The content of each well-formed log record: its query (fresh, a near-duplicate of an earlier
one, or a session turn), the retrieved contexts, the response its case calls for, the reviewer's
feedback and correction, and where it planted PII."""

from __future__ import annotations

import json
from collections import Counter

from .arithmetic import weak_reasoning_case
from .fake_pii import FakePII
from .plan import N_RECORDS, NEAR_DUP_SHARE, is_unanswerable
from .source import (
    COMMENTS,
    FOLLOW_LEADS,
    KB,
    LEADS,
    MK_PLAIN,
    PERSONAS,
    PII_COMMENT_TEMPLATES,
    PII_TEMPLATE_GROUP,
    PII_TEMPLATES,
    PLAIN_STYLES,
    PLAIN_STYLES_UNCITED,
    POLICY_BY_TOPIC,
    POLICY_COMMENTS,
    POLICY_VIOLATIONS,
    RUDE_STYLES,
    SITUATIONS,
    STALE_COMMENTS,
    TAILS,
)
from .text import (
    DETECT,
    IDK_JSON,
    NUM_RE,
    SIMILAR,
    SimilarityIndex,
    answer_json,
    cite,
    frame,
    lower_first,
    perturb_number,
    surface_variant,
)


class LogWriter:
    """Builds the content of each log record (query, contexts, response, feedback, correction)."""

    def __init__(self, rng, unanswerable):
        self.rng = rng
        self.pii = FakePII(rng)
        self.docs = {d["id"]: d for d in KB}
        self.qa_docs = [d for d in KB if d["qa"]]
        self.unanswerable = unanswerable
        self.usage = Counter()
        self.history = []          # earlier queries: {"key", "lead", "tail", "query", "paras", "base"}
        self.similar = SimilarityIndex()
        self.sessions = {}         # unit index -> planned (doc, qa index) per turn
        self.dups_left = round(N_RECORDS * NEAR_DUP_SHARE)
        self.stats = Counter()
        self.stale_pairs = [(d["stale_of"], qi, d["id"]) for d in KB if d["stale_of"] for qi in d["stale"]]

    # -- helpers ------------------------------------------------------------
    def is_numeric(self, key):
        _, doc_id, qi = key
        return bool(NUM_RE.search(self.docs[doc_id]["qa"][qi]["gold"]))

    def candidates(self, need):
        if need == "stale":
            return [("kb", c, qi) for c, qi, _ in self.stale_pairs]
        keys = [("kb", d["id"], i) for d in self.qa_docs for i in range(len(d["qa"]))]
        return [k for k in keys if self.is_numeric(k)] if need == "numeric" else keys

    def pick_least_used(self, keys):
        low = min(self.usage[k] for k in keys)
        return self.rng.choice([k for k in keys if self.usage[k] == low])

    def pii_frame(self, question, topic, need_email):
        group = "email" if need_email else self.rng.choice([PII_TEMPLATE_GROUP.get(topic, "generic"), "generic"])
        text, values = self.pii.fill(self.rng.choice(PII_TEMPLATES[group]), q=question)
        return text, values

    def framing(self, attempt):
        """(lead, tail) for one attempt: short ones first, then longer situational context."""
        rng = self.rng
        tail = rng.choice(TAILS) if rng.random() < 0.3 else ""
        if attempt < 4:
            return (rng.choice(LEADS) if rng.random() < 0.55 else ""), tail
        context = f"{rng.choice(PERSONAS)} {rng.choice(SITUATIONS)}"
        if rng.random() < 0.7:
            return context + " ", tail
        return "", " " + context[0].upper() + context[1:]

    def distinct(self, make, attempts=40):
        """Call ``make(attempt)`` until the query it returns is not a near-duplicate of an earlier one."""
        for attempt in range(attempts):
            out = make(attempt)
            if self.similar.max_similarity(out[0]) < SIMILAR:
                return out
        self.stats["framing_fallback"] += 1
        return out

    def fresh_query(self, key, base, paras, entry, topic):
        """A query for ``key`` that no earlier query nearly duplicates: question, lead-in and/or tail."""
        values, lead, tail = {}, "", ""
        if entry["pii_query"]:
            query, values = self.distinct(lambda _: self.pii_frame(base, topic, entry["pii_correction"]))
        else:
            def make(attempt):
                lead, tail = self.framing(attempt)
                return frame(lead, base, tail), lead, tail
            query, lead, tail = self.distinct(make)
        self.history.append({"key": key, "lead": lead, "tail": tail, "query": query, "paras": paras,
                             "pii": values})
        return query, values

    def near_dup(self, compatible):
        """Re-ask an earlier query: a paraphrase, a surface variant or an exact repeat."""
        earlier = self.rng.choice(compatible)
        kind = self.rng.choices(["paraphrase", "surface", "exact"], [0.55, 0.33, 0.12])[0]
        if earlier["pii"]:  # the same user asking again; never mangle the planted values
            kind = "exact"
        if kind == "paraphrase" and earlier["paras"]:
            query = frame(earlier["lead"], self.rng.choice(earlier["paras"]), earlier["tail"])
        elif kind == "exact":
            query = earlier["query"]
        else:
            kind = "surface"
            query = surface_variant(self.rng, earlier["query"])
        self.stats[f"near_dup_{kind}"] += 1
        return earlier["key"], query, earlier["pii"]

    def want_dup(self, remaining_eligible):
        if self.dups_left <= 0 or len(self.history) < 40:
            return False
        return self.rng.random() < self.dups_left / max(1, remaining_eligible)

    def contexts(self, relevant, n=None, unrelated_to=None, low=False):
        """2-4 retrieved docs: relevant ones first (usually), distractors after, scores descending."""
        rng = self.rng
        n = max(n or rng.choices([2, 3, 4], [0.3, 0.45, 0.25])[0], len(relevant))
        chosen = [self.docs[r] for r in relevant]
        banned = {d["id"] for d in chosen}
        if unrelated_to:
            banned |= {d["id"] for d in KB if d["topic"] == unrelated_to["topic"] or d["id"] == unrelated_to["id"]}
        topic = chosen[0]["topic"] if chosen else None
        while len(chosen) < n:
            same = [d for d in KB if d["topic"] == topic and d["id"] not in banned and not d["pii"]]
            pool = same if same and rng.random() < 0.5 else [
                d for d in KB if d["id"] not in banned and not d["pii"]]
            d = rng.choice(pool)
            chosen.append(d)
            banned.add(d["id"])
        top = rng.uniform(0.42, 0.66) if low else (rng.uniform(0.72, 0.95) if rng.random() < 0.9
                                                  else rng.uniform(0.55, 0.72))
        scores = [top]
        for i in range(1, n):
            drop = rng.uniform(0.005, 0.06) if i < len(relevant) else rng.uniform(0.03, 0.2)
            scores.append(max(0.12, scores[-1] - drop))
        if relevant and len(relevant) == 1 and n > 1 and not low and rng.random() < 0.06:
            chosen[0], chosen[1] = chosen[1], chosen[0]  # a distractor narrowly outranks the relevant doc
            scores[1] = max(scores[1], scores[0] - rng.uniform(0.01, 0.06))
            self.stats["relevant_not_first"] += 1
        return [{"id": d["id"], "text": d["text"], "score": round(s, 2)} for d, s in zip(chosen, scores)]

    # -- query selection ----------------------------------------------------
    def question(self, key):
        """(question, paraphrases, topic) of a query key: ("kb", doc id, qa index) or ("un", index, 0)."""
        if key[0] == "un":
            u = self.unanswerable[key[1]]
            return u["q"], u["paras"], u["kb_topic"]
        d = self.docs[key[1]]
        item = d["qa"][key[2]]
        return item["q"], item["paras"], d["topic"]

    def choose_query(self, entry, keys, eligible_left):
        """Re-ask an earlier query about one of ``keys`` or ask the least used one afresh: (key, query, pii)."""
        key_set = set(keys)
        compatible = [h for h in self.history if h["key"] in key_set]
        if self.rng.random() > 0.05:  # rarely, the same user re-sends a query holding PII
            compatible = [h for h in compatible if not h["pii"]]
        if compatible and not entry["pii_query"] and self.want_dup(eligible_left):
            self.dups_left -= 1
            key, query, values = self.near_dup(compatible)
        else:
            key = self.pick_least_used(keys)
            base, paras, topic = self.question(key)
            query, values = self.fresh_query(key, base, paras, entry, topic)
        self.usage[key] += 1
        return key, query, values

    def single_query(self, entry, eligible_left):
        """The query of a record outside sessions: (item or (doc, qa index), query); sets last_pii."""
        if is_unanswerable(entry):
            keys = [("un", i, 0) for i in range(len(self.unanswerable))]
            key, query, self.last_pii = self.choose_query(entry, keys, eligible_left)
            return self.unanswerable[key[1]], query
        case = entry["case"]
        need = ("numeric" if "hallucination" in entry["labels"] and case != "hallucination_no_context"
                else "stale" if case == "stale_knowledge" else None)
        key, query, self.last_pii = self.choose_query(entry, self.candidates(need), eligible_left)
        return (self.docs[key[1]], key[2]), query

    def weak_reasoning_query(self, entry):
        """A weak-reasoning question, framed (or holding PII) like any fresh query; sets last_pii."""
        question, *rest = weak_reasoning_case(self.rng)
        if entry["pii_query"]:
            query, self.last_pii = self.distinct(
                lambda _: self.pii_frame(question, "billing", entry["pii_correction"]))
        else:
            def make(attempt):
                lead, tail = self.framing(attempt)
                return frame(lead, question, tail), None
            query, _ = self.distinct(make)
        return (query, *rest)

    def session_turn(self, u, unit, entry, turn):
        """The query of one session turn: ((doc, qa index), query); plans the session on its first turn."""
        if u not in self.sessions:
            self.sessions[u] = self.plan_session(unit)
        (doc_id, qi, query), self.last_pii = self.session_query(entry, turn, self.sessions[u])
        self.stats["session_records"] += 1
        return (self.docs[doc_id], qi), query

    def plan_session(self, unit):
        """Pick one doc for a session and a question for each turn (numeric ones for hallucination turns)."""
        rng = self.rng
        need_numeric = [("hallucination" in e["labels"]) for e in unit]
        cands = [d for d in self.qa_docs if len(d["qa"]) >= min(len(unit), 3)
                 and sum(self.is_numeric(("kb", d["id"], i)) for i in range(len(d["qa"]))) >= sum(need_numeric)]
        d = rng.choice(cands)
        pairs = [(d["id"], i) for i in rng.sample(range(len(d["qa"])), len(d["qa"]))]
        others = [(o["id"], i) for o in self.qa_docs if o["topic"] == d["topic"] and o is not d
                  for i in range(len(o["qa"]))]
        rng.shuffle(others)
        pairs += others
        turns, used = [None] * len(unit), set()
        order = sorted(range(len(unit)), key=lambda i: not need_numeric[i])  # numeric turns pick first
        for i in order:
            pick = next(p for p in pairs if p not in used and (not need_numeric[i] or self.is_numeric(("kb",) + p)))
            used.add(pick)
            turns[i] = pick
        if turns[0][0] != d["id"]:  # the session opens on its own doc
            j = next(i for i, t in enumerate(turns) if t[0] == d["id"])
            turns[0], turns[j] = turns[j], turns[0]
        return turns

    def session_query(self, entry, turn, turns):
        doc_id, qi = turns[turn]
        item = self.docs[doc_id]["qa"][qi]
        if turn == 0:
            query, values = self.fresh_query(("kb", doc_id, qi), item["q"], item["paras"], entry,
                                             self.docs[doc_id]["topic"])
        else:
            same_doc = doc_id == turns[0][0]

            def make(attempt):
                if attempt == 0 and same_doc and item["follow"] and self.rng.random() < 0.6:
                    query = item["follow"]
                elif attempt < 20:
                    tail = self.rng.choice(TAILS) if self.rng.random() < 0.25 else ""
                    query = self.rng.choice(FOLLOW_LEADS) + lower_first(item["q"]) + tail
                else:
                    query = f"{self.rng.choice(FOLLOW_LEADS)}{self.rng.choice(PERSONAS).lower()} " \
                            f"{self.rng.choice(SITUATIONS)} {item['q']}"
                if entry["pii_query"]:
                    return self.pii_frame(query, self.docs[doc_id]["topic"], entry["pii_correction"])
                return query, {}
            query, values = self.distinct(make)
        self.usage[("kb", doc_id, qi)] += 1
        return (doc_id, qi, query), values

    # -- feedback -----------------------------------------------------------
    def feedback(self, entry, labels, fmt=None):
        fmt = fmt or {}
        case = entry["case"]
        if case == "no_feedback":
            return None
        if case == "positive":
            fb = {"rating": 1, "labels": []}
            if entry["comment"]:
                fb["comment"] = self.rng.choice(COMMENTS["positive"])
            return fb
        shown = [] if entry["unlabelled"] else list(labels)
        fb = {} if entry["no_rating"] else {"rating": -1}
        fb["labels"] = shown
        if entry["comment"]:
            text = fmt.pop("comment_override", None)
            if text is None:
                pool = COMMENTS.get(case) or COMMENTS[labels[0]]
                text = self.rng.choice(pool).format(**fmt)
            if entry["pii_comment"]:
                note, _ = self.pii.fill(self.rng.choice(PII_COMMENT_TEMPLATES))
                text = f"{text}; {note}"
                self.stats["pii_in_comment"] += 1
                self.rec_pii.append("comment")
            fb["comment"] = text
        return fb

    # -- responses per case -------------------------------------------------
    def plain_text(self, d, gold, cited_ok=True):
        style = self.rng.choice(PLAIN_STYLES if cited_ok else PLAIN_STYLES_UNCITED)
        return style.format(gold=gold, gold_l=lower_first(gold), title=d["title"], title_l=d["title"].lower(),
                            id=d["id"], cited=cite(gold, [d["id"]]))

    def rude(self, ans):
        return self.rng.choice(RUDE_STYLES).format(ans=ans, ans_l=lower_first(ans))

    def bogus_citation(self, d, ctx_ids):
        if self.rng.random() < 0.5:
            return self.rng.choice([f"{d['id']}-faq", f"{d['id']}-v2", "tasklane-handbook", "internal-wiki"])
        return self.rng.choice([x["id"] for x in KB if x["id"] not in ctx_ids and not x["stale_of"]])

    def policy_answer(self, d, gold, rude, fmt):
        """A correct answer plus a sentence that breaks a support policy fitting the doc's topic."""
        kinds = POLICY_BY_TOPIC.get(d["topic"], [k for k, sentences in POLICY_VIOLATIONS.items() for _ in sentences])
        kind = self.rng.choice(kinds)
        sentence = self.rng.choice(POLICY_VIOLATIONS[kind])
        body = f"{cite(gold, [d['id']])} {sentence}"
        if rude:
            body = self.rude(body)
        fmt["comment_override"] = POLICY_COMMENTS[kind]
        if kind == "other_customer" and "@" in sentence:
            self.stats["pii_in_response"] += 1
            self.rec_pii.append("response")
        return answer_json(body, [d["id"]])

    def answerable_record(self, entry, d, qi):
        """Cases where the relevant doc is retrieved: positive, no_feedback and behaviour failures."""
        rng, item = self.rng, d["qa"][qi]
        gold, labels = item["gold"], entry["labels"]
        contexts = self.contexts([d["id"]])
        ctx_ids = [c["id"] for c in contexts]
        ideal = answer_json(cite(gold, [d["id"]]), [d["id"]])
        fmt = {"doc": d["id"], "title": d["title"], "right": gold}
        wrong, _ = perturb_number(rng, gold) if "hallucination" in labels else (None, None)
        label_set = set(labels)
        if not labels:
            response = ideal
        elif label_set == {"bad_format"}:
            response = self.plain_text(d, gold)
        elif label_set == {"wrong_tone"}:
            response = answer_json(self.rude(cite(gold, [d["id"]])), [d["id"]])
        elif label_set == {"missing_citation"}:
            response = answer_json(gold, [])
        elif label_set == {"hallucination"}:
            src = d["id"]
            if entry["unlabelled"] or rng.random() < 0.2:
                src = self.bogus_citation(d, ctx_ids)
                self.stats["cites_id_not_in_context"] += 1
            response = answer_json(cite(wrong, [src]), [src])
        elif "policy_violation" in label_set:
            response = self.policy_answer(d, gold, "wrong_tone" in label_set, fmt)
        elif label_set == {"bad_format", "missing_citation"}:
            response = self.plain_text(d, gold, cited_ok=False)
        elif label_set == {"wrong_tone", "missing_citation"}:
            response = answer_json(self.rude(gold), [])
        elif label_set == {"hallucination", "missing_citation"}:
            response = answer_json(wrong, [])
        elif label_set == {"bad_format", "hallucination"}:
            response = self.plain_text(d, wrong)
        else:
            raise ValueError(labels)
        return contexts, response, ideal, fmt

    def unanswerable_record(self, entry, u):
        """hallucination_no_context and missing_knowledge: no retrieved doc holds the answer."""
        if entry["case"] == "hallucination_no_context":
            contexts = self.contexts([], unrelated_to={"topic": u["kb_topic"], "id": ""}, low=True)
            src = contexts[0]["id"]
            return contexts, answer_json(cite(u["fake"], [src]), [src]), IDK_JSON, {"topic": u["topic"]}
        contexts = self.contexts([], low=True)
        if "bad_format" in entry["labels"]:
            response, correction = self.rng.choice(MK_PLAIN), IDK_JSON
        else:
            response, correction = IDK_JSON, answer_json(u["real"], []) if u["real"] else None
        return contexts, response, correction, {"topic": u["topic"]}

    def stale_record(self, entry, d, qi):
        """A stale variant of the doc is retrieved and its outdated sentence cited."""
        stale_id = next(s for c, q_i, s in self.stale_pairs if c == d["id"] and q_i == qi)
        stale_doc = self.docs[stale_id]
        rel = [stale_id, d["id"]] if self.rng.random() < 0.5 else [stale_id]
        contexts = self.contexts(rel)
        response = answer_json(cite(stale_doc["stale"][qi], [stale_id]), [stale_id])
        correction = answer_json(cite(d["qa"][qi]["gold"], [d["id"]]), [d["id"]])
        return contexts, response, correction, {"comment_override": STALE_COMMENTS[stale_id]}

    def wrong_retrieval_record(self, entry, d, qi):
        """Unrelated docs are retrieved; the answer follows the first of them, or says "I don't know"."""
        contexts = self.contexts([], unrelated_to=d, low=True)
        first = self.docs[contexts[0]["id"]]
        if self.rng.random() < 0.4 and first["qa"]:
            response = answer_json(cite(self.rng.choice(first["qa"])["gold"], [first["id"]]), [first["id"]])
        else:
            response = IDK_JSON
        correction = answer_json(cite(d["qa"][qi]["gold"], [d["id"]]), [d["id"]])
        return contexts, response, correction, {"doc": d["id"]}

    def pii_correction(self, entry, correction):
        """Where planned, the correction repeats the email the user gave in the query."""
        if not (entry["pii_correction"] and correction and self.last_pii.get("email")):
            return correction
        obj = json.loads(correction)
        obj["answer"] += f" We've emailed the details to {self.last_pii['email']}."
        self.stats["pii_in_correction"] += 1
        self.rec_pii.append("correction")
        return json.dumps(obj, ensure_ascii=False)

    def build(self, entry, query_info):
        """Return the record fields for ``entry`` (everything but id, timestamp and session id)."""
        case = entry["case"]
        if case == "weak_reasoning":
            query, rel_ids, good, bad, right = query_info
            contexts = self.contexts(rel_ids)
            response, correction, fmt = answer_json(bad, rel_ids), answer_json(good, rel_ids), {"right": right}
        elif is_unanswerable(entry):
            u, query = query_info
            contexts, response, correction, fmt = self.unanswerable_record(entry, u)
        else:
            (d, qi), query = query_info
            record = {"stale_knowledge": self.stale_record,
                      "wrong_retrieval": self.wrong_retrieval_record}.get(case, self.answerable_record)
            contexts, response, correction, fmt = record(entry, d, qi)
        if case in ("positive", "no_feedback") or not entry["correction"]:
            correction = None
        correction = self.pii_correction(entry, correction)
        feedback = self.feedback(entry, entry["labels"], fmt)
        return {"query": query, "contexts": contexts, "response": response, "feedback": feedback,
                "correction": correction}

    def account(self, fields):
        """Near-duplicate and PII bookkeeping once a record's fields are final."""
        if self.similar.max_similarity(fields["query"]) >= DETECT:
            self.stats["detectable_near_dups"] += 1
        self.similar.add(fields["query"])
        if self.last_pii:
            self.stats["pii_in_query"] += 1
            self.rec_pii.insert(0, "query")
        if any(self.docs[c["id"]]["pii"] for c in fields["contexts"]):
            self.rec_pii.append("contexts")
        fields["pii"] = self.rec_pii

    def generate(self, items, units):
        """[(time, unit, entry, fields)] for the scheduled items, in time order."""
        records = []
        eligible_left = sum(1 for _, u, _, e in items if len(units[u]) == 1 and e["case"] != "weak_reasoning")
        for t, u, turn, entry in items:
            self.last_pii, self.rec_pii = {}, []
            if len(units[u]) > 1:
                query_info = self.session_turn(u, units[u], entry, turn)
            elif entry["case"] == "weak_reasoning":
                query_info = self.weak_reasoning_query(entry)
            else:
                query_info = self.single_query(entry, eligible_left)
                eligible_left -= 1
            fields = self.build(entry, query_info)
            self.account(fields)
            records.append((t, u, entry, fields))
        return records
