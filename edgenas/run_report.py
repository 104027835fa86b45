"""The report of an ``edgenas run``: one Markdown file and one self-contained HTML file.

Both are rendered from the same list of sections (text, tables, figures) gathered from the files the
stages wrote, so they always say the same thing; the HTML embeds its figures as base64 PNGs and
opens anywhere without the run folder.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgenas.files import write_text_atomic
from edgenas.search.decisiveness import undecided_note


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    path: Path
    caption: str


Block = str | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _f(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mmacs(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.2f} M"


def _expected(budget: str, value: float) -> str:
    """An epoch's expected cost in the budget's unit (MACs in M, latency in ms)."""
    return f"{value:.3f} ms" if budget.startswith("latency") else _mmacs(value) + " MACs"


def _figure(path: Path, caption: str) -> list[Figure]:
    return [Figure(path, caption)] if path.exists() else []


T = TypeVar("T")


def _stage(title: str, data: T | None, build: Callable[[T], list[Block]]) -> Section:
    """A stage's section: ``build(data)``, or a placeholder while the stage has written nothing (no
    file, or an empty one), so every report lists the whole chain."""
    return Section(title, build(data) if data else ["Not run yet."])


def _profile(out: Path, prof: dict[str, Any]) -> list[Block]:
    env = prof.get("environment", {})
    rows = sorted(prof.get("entries", []), key=lambda e: e["latency_ms"]["median"])
    units = prof.get("units") or f"batch {prof.get('batch')}"
    return [f"Device **{env.get('device_name', prof.get('device'))}**, {units}, mode {prof.get('mode')}, "
            f"{prof.get('dtype')}, {prof.get('threads') or env.get('torch_threads')} threads, torch "
            f"{env.get('torch')}. Latency is the median per call after a stable warm-up, each entry timed for "
            "a minimum duration (ms; an onnxruntime entry is what one more copy of the operator adds).",
            Table(["op", "C x H x W : stride", "median ms", "p10", "p90", "MMACs", "params"],
                  [[e["op"], f"{e['C']}x{e['H']}x{e['W']}:{e['stride']}",
                    _f(e["latency_ms"]["median"], 3), _f(e["latency_ms"]["p10"], 3),
                    _f(e["latency_ms"]["p90"], 3), _f(e["macs"] / 1e6, 3), e["params"]] for e in rows]),
            *_figure(out / "figures" / "profile.png", "Latency per operator and shape (EL-DARTS Fig. 1 analogue)")]


def _space(space: dict[str, Any]) -> list[Block]:
    return ["Kept: " + ", ".join(f"`{o}`" for o in space.get("ops", [])) + ".",
            Table(["dropped", "rule", "why"],
                  [[d.get("op"), d.get("rule"), d.get("reason")] for d in space.get("dropped", [])])]


def _decided(r: dict[str, Any], cell: str) -> str:
    """An epoch's decided share and median margin of one cell type, e.g. ``75% (0.081)``."""
    c = (r.get("decisiveness") or {}).get("cells", {}).get(cell)
    return "-" if c is None else f"{c['decided_share']:.0%} ({c['median_margin']:.3f})"


def decisiveness_blocks(hist: list[dict[str, Any]]) -> list[Block]:
    """The last epoch's verdict on the derived genotype: decided, or close to a random pick."""
    dec = hist[-1].get("decisiveness") if hist else None
    if not dec:
        return []
    share = dec.get("chosen_decided_share")
    text = (f"Decisiveness: an edge counts as decided when its strongest operator's weight leads the second's "
            f"by at least {dec['threshold']} (over the operators derivation can pick); "
            f"{_f(100 * share, 0) if share is not None else '-'}% of the derived genotype's edges are decided.")
    note = undecided_note(dec)
    if note:
        text += f" **Warning: {note}.**"
    return [text]


def _search(out: Path, config: dict[str, Any], hist: list[dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [
        f"Method `{config.get('method')}`, {len(hist)} epoch(s).",
        Table(["epoch", "train top-1 %", "val top-1 %", "skip (normal)", "decided normal (median margin)",
               "decided reduce", "seconds", "peak MiB", "expected cost"],
              [[r["epoch"] + 1, _f(r.get("train_top1")), _f(r.get("val_top1")), r.get("normal_skip_connect"),
                _decided(r, "normal"), _decided(r, "reduce"),
                _f(r.get("seconds"), 1), _f((r.get("peak_memory_bytes") or 0) / 2**20, 0),
                "; ".join(_expected(k, v["value"]) for k, v in (r.get("penalties") or {}).items()) or "-"]
               for r in hist])]
    geno = _read_json(out / "search" / "genotype.json")
    if geno:
        blocks.append("Derived genotype: `" + json.dumps({k: geno[k] for k in
                      ("normal", "normal_concat", "reduce", "reduce_concat") if k in geno}) + "`")
    blocks += decisiveness_blocks(hist)
    blocks += _figure(out / "search" / "figures" / "arch_weights.png",
                      "Operator weights per edge (EL-DARTS Fig. 3 analogue); a dashed grey outline "
                      "and '(undecided)' mark edges whose margin is below the threshold")
    blocks += _figure(out / "search" / "figures" / "genotype.png", "Final normal and reduction cells")
    return blocks


def _budget(budget: dict[str, Any]) -> list[Block]:
    limits = budget.get("limits", {})
    text = ("Budgets: " + ", ".join(f"{k} <= {_mmacs(v) if k == 'macs' else _f(v, 3) + ' ms'}"
                                    for k, v in limits.items())
            + f"; search penalty {budget.get('penalty')} with weight {budget.get('weight')}.")
    return [text,
            Table(["genotype", "MACs", "predicted latency ms" + (f" (whole network, {budget['latency_units']})"
                                                                  if budget.get("latency_units") else "")],
                  [[name, _mmacs(budget[name].get("macs")), _f(budget[name].get("latency_ms"), 3)]
                   for name in ("constrained", "unconstrained")])]


def _train(out: Path, thist: list[dict[str, Any]]) -> list[Block]:
    return [Table(["epoch", "lr", "train loss", "train top-1 %", "test top-1 %", "test top-5 %", "seconds"],
                  [[r["epoch"] + 1, _f(r.get("lr"), 4), _f(r.get("train_loss"), 3), _f(r.get("train_top1")),
                    _f(r.get("test_top1")), _f(r.get("test_top5")), _f(r.get("seconds"), 1)] for r in thist]),
            *_figure(out / "train" / "figures" / "training_curves.png", "Training curves")]


def _export(exp: dict[str, Any], budget: dict[str, Any] | None) -> list[Block]:
    ver = exp.get("verification", {})
    test = ver.get("test", {})
    blocks: list[Block] = [
        f"`model.onnx` (opset {exp.get('onnx', {}).get('opset')}): verification "
        f"**{'passed' if ver.get('passed') else 'FAILED'}**; test top-1 PyTorch "
        f"{_f(test.get('torch_top1'))}% vs ONNX Runtime {_f(test.get('ort_top1'))}%; "
        f"MACs {_mmacs(exp.get('costs', {}).get('macs'))}, params {exp.get('costs', {}).get('params')}.",
        Table(["runtime", "model", "provider", "batch", "median ms", "p10", "p90", "n"],
              [[t.get("runtime"), t.get("model"), (t.get("provider") or t.get("device") or "")
                .removesuffix("ExecutionProvider"), t.get("batch"),
                *(_f(t["stats"].get(k), 3) for k in ("median", "p10", "p90")), t["stats"].get("n")]
               for t in exp.get("timing", [])])]
    if exp.get("prediction"):
        from edgenas.export.report import describe_budget, describe_prediction  # export's own wording

        blocks.append(describe_prediction(exp["prediction"]))
        budget_line = describe_budget(exp["prediction"])
        if budget_line:
            blocks.append(budget_line)
    unavailable = [p for p in exp.get("providers", []) if not p.get("usable")]
    if unavailable:
        blocks.append("Unavailable providers: " + "; ".join(
            f"{p.get('name')}: {p.get('reason')}" for p in unavailable) + ".")
    if budget:
        macs = exp.get("costs", {}).get("macs")
        lim = budget.get("limits", {}).get("macs")
        if lim is not None and macs is not None:
            blocks.append(f"Budget check of the exported network: {_mmacs(macs)} MACs "
                          f"{'<=' if macs <= lim else '>'} budget {_mmacs(lim)} "
                          f"({'met' if macs <= lim else 'NOT met'}).")
    return blocks


def sections(out: Path, config: dict[str, Any]) -> list[Section]:
    """Everything the run produced that a person wants to see, in chain order."""
    out = Path(out)
    budget = _read_json(out / "budget.json")
    secs = [
        _stage("1. Profile", _read_json(out / "profile.json"), lambda prof: _profile(out, prof)),
        _stage("2. Pruned search space", _read_json(out / "space.json"), _space),
        _stage("3. Search", _read_jsonl(out / "search" / "history.jsonl"), lambda hist: _search(out, config, hist)),
    ]
    if budget:  # only a budgeted run has this section: no placeholder for it
        secs.append(Section("3b. Budget check", _budget(budget)))
    secs += [
        _stage("4. Retraining", _read_jsonl(out / "train" / "history.jsonl"), lambda thist: _train(out, thist)),
        _stage("5. Export", _read_json(out / "export" / "report.json"), lambda exp: _export(exp, budget)),
    ]
    return secs


def render_markdown(title: str, secs: list[Section], base: Path) -> str:
    lines = [f"# {title}", ""]
    for sec in secs:
        lines += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                if not b.rows:
                    continue
                lines.append("| " + " | ".join(b.headers) + " |")
                lines.append("|" + "---|" * len(b.headers))
                lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b.rows]
            elif isinstance(b, Figure):
                rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
                lines.append(f"![{b.caption}]({rel.as_posix()})")
            else:
                lines.append(b)
            lines.append("")
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """Escape, then the two inline marks the report uses: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_html(title: str, secs: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:90%}th{background:#f3f3f3}img{max-width:100%}code{background:#f6f6f6;"
             "word-break:break-all}figcaption{color:#555;font-size:90%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for sec in secs:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                if not b.rows:
                    continue
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.headers) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b.rows]
                parts.append("</table>")
            elif isinstance(b, Figure):
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_inline_md(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_run_report(out: Path, config: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out)
    secs = sections(out, config)
    title = f"edgenas run: {config.get('method')} on {config.get('data')}"
    md = write_text_atomic(out / "report.md", render_markdown(title, secs, out))
    page = write_text_atomic(out / "report.html", render_html(title, secs))
    return md, page


def collect(out: Path) -> dict[str, Any]:
    """The headline numbers of a run, for the console and --json."""
    out = Path(out)
    summary: dict[str, Any] = {"out": str(out)}
    space = _read_json(out / "space.json")
    if space:
        summary["space"] = space.get("ops")
    geno = _read_json(out / "search" / "genotype.json")
    if geno:
        summary["genotype"] = {k: geno[k] for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k in geno}
    shist = _read_jsonl(out / "search" / "history.jsonl")
    dec = shist[-1].get("decisiveness") if shist else None
    if dec:
        summary["search_decided_share"] = dec.get("chosen_decided_share")
        note = undecided_note(dec)
        if note:
            summary["search_note"] = note
    thist = _read_jsonl(out / "train" / "history.jsonl")
    if thist:
        summary["test_top1"] = thist[-1].get("test_top1")
    exp = _read_json(out / "export" / "report.json")
    if exp:
        summary["export"] = {"passed": exp.get("verification", {}).get("passed"),
                             "onnx_test_top1": exp.get("verification", {}).get("test", {}).get("ort_top1"),
                             "macs": exp.get("costs", {}).get("macs"), "params": exp.get("costs", {}).get("params"),
                             "speedup": exp.get("speedup")}
    budget = _read_json(out / "budget.json")
    if budget:
        summary["budget"] = {"limits": budget.get("limits"), "constrained": budget.get("constrained")}
    for name in ("report.md", "report.html"):
        if (out / name).exists():
            summary[name.replace(".", "_")] = str(out / name)
    return summary
