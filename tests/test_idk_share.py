"""curate keeps the "I don't know" share of the training set within curate.idk.max_share,
counting every source of refusals, and says in report.md and the manifest what it dropped."""

from __future__ import annotations

import json

from conftest import NOUNS, answer, ctx, rag_logs, read_jsonl, record

IDK = answer("I don't know based on the provided documents.")


def refusal_heavy_logs() -> list[dict]:
    """10 answered corrections, 2 refusals rated good (kept as they are), 10 hallucinations
    whose documents lack the answer (each also an "I don't know" example)."""
    answered = rag_logs(10)
    refusing = [record(f"Which colour is the {noun} icon in dark mode?", contexts=[ctx(f"d-{noun}", f"The {noun} menu.")],
                       response=IDK, rating=1) for noun in NOUNS[10:12]]
    hallucinated = [record(f"Who designed the {noun} feature originally?", contexts=[ctx(f"h-{noun}", f"Open the {noun}.")],
                           response=answer(f"Ada designed the {noun} [h-{noun}].", f"h-{noun}"), rating=-1,
                           labels=["hallucination"], correction=IDK) for noun in NOUNS[12:22]]
    return answered + refusing + hallucinated


def curate(ws, max_share: float):
    cfg = ws.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                            "dedup": {"threshold": 0.9}, "idk": {"synthetic_fraction": 0.5, "max_share": max_share}})
    result = ws.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    out = ws.curated()
    return json.loads((out / "manifest.json").read_text()), read_jsonl(out / "examples.jsonl"), out


def refusal_share(examples: list[dict]) -> float:
    from pipelines.answers import parse_answer
    from pipelines.config import OutputConfig

    o = OutputConfig()
    refusals = [parse_answer(e["ideal_answer"], o.format, o.idk_answer).refusal for e in examples]
    return sum(refusals) / len(refusals)


def test_the_idk_share_is_bounded_counting_every_source(workspace):
    workspace.write_logs("a.jsonl", refusal_heavy_logs())
    unbounded, examples, _ = curate(workspace, 1.0)
    s = unbounded["idk_share"]
    assert s["refusals"] == {"from_records": 2, "idk_from_hallucination": 10, "idk_synthetic": 6}
    assert s["share"] == round(18 / 28, 4) == round(refusal_share(examples), 4)
    assert s["dropped"] == {"idk_synthetic": 0, "idk_from_hallucination": 0}

    bounded, examples, out = curate(workspace, 0.25)
    s = bounded["idk_share"]
    # 10 answers leave room for floor(0.25 * 10 / 0.75) = 3 refusals: the 2 from records stay,
    # 1 from a hallucination is kept, no synthetic one is made.
    assert s["refusals"] == {"from_records": 2, "idk_from_hallucination": 1, "idk_synthetic": 0}
    assert s["dropped"] == {"idk_synthetic": 6, "idk_from_hallucination": 9}
    assert round(refusal_share(examples), 4) == s["share"] == round(3 / 13, 4) <= 0.25
    c = bounded["counts"]
    assert c["added_dropped"]["over_idk_share"] == 9
    assert c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())
    report = (out / "report.md").read_text()
    assert "23.1% of the 13 RAG examples are refusals" in report
    assert "6 synthetic examples not made, 9 made from hallucinations not written" in report


def test_corrections_alone_over_the_bound_are_kept_and_reported(workspace):
    workspace.write_logs("a.jsonl", refusal_heavy_logs())
    manifest, _, out = curate(workspace, 0.1)
    s = manifest["idk_share"]
    assert s["refusals"]["from_records"] == 2 and s["over_bound_from_records"]
    assert "Over the bound from records alone" in (out / "report.md").read_text()
