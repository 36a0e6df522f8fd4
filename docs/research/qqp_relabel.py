"""Relabelling QQP false hits to measure true precision (issue 13).

QQP's `same` labels are noisy exactly where a cache decides ("How do i lose weight?" /
"How do I lose weight?" is labelled different). This script joins a bench run's
`false-hits.jsonl` with the dataset so a person can relabel each false hit by the rule
below, and then recomputes precision with the relabelled pairs.

The relabelled pairs are stored as references into the dataset file (line number and
field), never as text: the data stays where it is published.

Rule (applied by hand, one pair at a time, without looking at the similarity): a pair is
`same` when one correct and complete answer to one question is a correct and complete
answer to the other: the same intent, the same entities, numbers, dates and direction.
Differences in wording, in pronoun generality (I / you / one / we / someone), in grammatical
number ("the best way" / "the best ways"), in modal verbs ("how do / can / should I"), in
case, spelling or punctuation, and trailing context that does not change what is asked do
not make a pair different. Anything that changes the correct answer does (another place,
person, product, exam, year; "where" vs "who"; a reversed comparison).

  python3 qqp_relabel.py export FALSE_HITS DATASET > to-label.jsonl   # adds refs, for labelling
  python3 qqp_relabel.py report REPORT_JSON FALSE_HITS DATASET LABELS  # corrected precision
"""
import json
import sys


def refs(dataset):
    """text -> "L<line>a|b" of its first occurrence (1-based line numbers)."""
    out = {}
    with open(dataset) as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            for k in ("a", "b"):
                t = " ".join(row[k].split())
                out.setdefault(t, f"L{n}{k}")
    return out


def export(false_hits, dataset):
    r = refs(dataset)
    for line in open(false_hits):
        h = json.loads(line)
        print(json.dumps({"query": r.get(" ".join(h["query"].split())),
                          "served": r.get(" ".join(h["served"].split())),
                          "similarity": h["similarity"],
                          "query_text": h["query"], "served_text": h["served"]}))


def report(report_json, false_hits, dataset, labels):
    """Precision of the configured rule with relabelled false hits: a false hit counts as
    right only when its pair is in LABELS as `same`; unlabelled ones stay wrong."""
    c = json.load(open(report_json))["configured"]
    r = refs(dataset)
    same = {(x["query"], x["served"]) for x in map(json.loads, open(labels)) if x["same"]}
    hits = c["hits"]
    rows = [json.loads(l) for l in open(false_hits) if l.strip()]
    relabelled = sum(1 for h in rows
                     if (r.get(" ".join(h["query"].split())),
                         r.get(" ".join(h["served"].split()))) in same)
    wrong = len(rows) - relabelled
    print(f"configured rule: {hits} hits, {len(rows)} false by the dataset's labels "
          f"(precision {1 - len(rows) / max(hits, 1):.4f})")
    print(f"{relabelled} of them are relabelled the same request")
    print(f"precision with the relabelled pairs: {1 - wrong / max(hits, 1):.4f} "
          f"({wrong} wrong answers in {hits})")


if __name__ == "__main__":
    {"export": export, "report": report}[sys.argv[1]](*sys.argv[2:])
