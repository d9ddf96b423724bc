"""The log files: malformed lines planted among the records, ids and session ids assigned in
time order, one file per week, the last one gzipped."""

from __future__ import annotations

import gzip
import io
import json
from datetime import timedelta

from .plan import FAILURE_CASES, LOG_FILES, LOG_START, MODEL, WEEK
from .records import LogWriter
from .source import PII_TEMPLATES, build_unanswerable
from .text import answer_json, cite

# (kind, file index); the BOM is added separately to the first line of file 0.
MALFORMED_PLAN = [
    ("truncated_pii", 0), ("trailing_comma", 0), ("single_quotes", 0), ("json_array", 0), ("empty", 0),
    ("query_number", 0), ("invalid_utf8", 0), ("missing_query", 0),
    ("truncated", 1), ("truncated_pii", 1), ("json_string", 1), ("contexts_string", 1), ("rating_bad", 1),
    ("empty", 1), ("single_quotes", 1), ("oversize", 1), ("labels_string", 1),
    ("truncated_pii", 2), ("trailing_comma", 2), ("invalid_utf8", 2), ("missing_query", 2), ("whitespace", 2),
    ("rating_bad", 2), ("contexts_string", 2), ("json_array", 2),
]
BAD_BYTES_MARK = "@@BAD_BYTES@@"


def malformed_lines(rng):
    """Return [(time, kind, payload)] for MALFORMED_PLAN; payload is a record dict or None."""
    writer = LogWriter(rng, build_unanswerable())
    pii = writer.pii
    out = []
    for kind, file_idx in MALFORMED_PLAN:
        t = file_idx * WEEK + rng.randint(3600, WEEK - 3600)
        if kind in ("empty", "whitespace"):
            out.append((t, kind, None))
            continue
        d = rng.choice(writer.qa_docs)
        item = rng.choice(d["qa"])
        query = item["q"]
        if kind in ("truncated_pii", "invalid_utf8"):
            query, _ = pii.fill(rng.choice(PII_TEMPLATES["email"] + PII_TEMPLATES["secret"]), q=query)
        if kind == "invalid_utf8":
            query = f"{query} {BAD_BYTES_MARK}"
        rec = {"query": query, "contexts": writer.contexts([d["id"]]),
               "response": answer_json(cite(item["gold"], [d["id"]]), [d["id"]]), "model": MODEL,
               "feedback": {"rating": 1, "labels": []}}
        if kind == "oversize":
            unit = cite(item["gold"], [d["id"]]) + " "
            rec["response"] = unit * (300_000 // len(unit) + 1)
            rec["feedback"] = {"rating": -1, "labels": [], "comment": "model got stuck in a loop"}
        out.append((t, kind, rec))
    return out


def serialize_malformed(kind, rec):
    """Bytes for one malformed line."""
    if rec is None:
        return b"   " if kind == "whitespace" else b""
    if kind == "query_number":
        rec["query"] = 404
    elif kind == "contexts_string":
        rec["contexts"] = ", ".join(c["id"] for c in rec["contexts"])
    elif kind == "rating_bad":
        rec["feedback"]["rating"] = "meh"
    elif kind == "labels_string":
        rec["feedback"] = {"rating": -1, "labels": "bad_format"}
    elif kind == "missing_query":
        del rec["query"]
    text = json.dumps(rec, ensure_ascii=False)
    if kind in ("truncated", "truncated_pii"):
        cut = text.index('"contexts"') + 60
        text = text[:cut]
    elif kind == "trailing_comma":
        text = text[:-1] + ",}"
    elif kind == "single_quotes":
        text = repr(rec)
    elif kind == "json_array":
        text = json.dumps([rec], ensure_ascii=False)
    elif kind == "json_string":
        text = json.dumps(json.dumps(rec, ensure_ascii=False), ensure_ascii=False)
    data = text.encode("utf-8")
    if kind == "invalid_utf8":
        data = data.replace(BAD_BYTES_MARK.encode(), b"\xff\xfe")
    return data


def record_line(head, entry, fields):
    """Bytes for one well-formed record; feedback and correction are sometimes null, sometimes absent."""
    rec = dict(head, query=fields["query"], contexts=fields["contexts"], response=fields["response"], model=MODEL)
    fb, corr = fields["feedback"], fields["correction"]
    if fb is not None:
        rec["feedback"] = fb
    elif entry["pii_query"] or len(fields["query"]) % 2:  # deterministic mix of absent / null
        rec["feedback"] = None
    if corr is not None:
        rec["correction"] = corr
    elif entry["case"] in FAILURE_CASES and len(fields["response"]) % 3 == 0:
        rec["correction"] = None
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def assemble_logs(records, malformed):
    """Merge good and malformed lines by time, assign ids and session ids, return bytes per file."""
    merged = [(t, 0, u, "record", (entry, fields)) for t, u, entry, fields in records]
    merged += [(t, 1, -1 - i, kind, rec) for i, (t, kind, rec) in enumerate(malformed)]
    merged.sort(key=lambda x: (x[0], x[1], x[2]))
    files = [[] for _ in LOG_FILES]
    session_ids, next_id, next_session = {}, 1, 1
    for t, _, u, kind, payload in merged:
        ts = (LOG_START + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")
        file_idx = min(t // WEEK, len(LOG_FILES) - 1)
        if u not in session_ids:
            session_ids[u] = f"s-{next_session}"
            next_session += 1
        head = {"id": None, "timestamp": ts, "session_id": session_ids[u]}
        if kind == "record":
            head["id"] = f"log-{next_id:05d}"
            next_id += 1
            files[file_idx].append(record_line(head, *payload))
        elif payload is None:
            files[file_idx].append(serialize_malformed(kind, None))
        else:
            head["id"] = f"log-{next_id:05d}"
            next_id += 1
            files[file_idx].append(serialize_malformed(kind, dict(head, **payload)))
    files[0][0] = b"\xef\xbb\xbf" + files[0][0]
    return [b"\n".join(lines) + b"\n" for lines in files], [len(lines) for lines in files]


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()
