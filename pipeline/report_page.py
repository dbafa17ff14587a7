"""The report's plots (matplotlib, Agg canvas) and its HTML page (every text escaped, the plots
embedded as base64 PNG, inline CSS, no script; a Content-Security-Policy that allows nothing from
the network), from the data pipeline.report.collect gathers."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone

from pipeline.report import AUC_PLOT, safe_name

# tab10: the candidates' colours in the alpha charts and in the page's key
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; padding: 0 1.5em; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; vertical-align: middle; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.chosen td { font-weight: bold; background: #fff6e0; }
img.alpha { display: block; width: 240px; height: 90px; }
img.figure { max-width: 100%; height: auto; }
.key span { display: inline-block; margin-right: 0.8em; font-size: 0.85em; }
.key b { display: inline-block; width: 1.2em; height: 0.35em; vertical-align: middle; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def _canvas(width: float, height: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def frontier(points: list[dict]) -> list[dict]:
    """The points no other point beats on both AUC and parameters, by parameters."""
    ordered = sorted(points, key=lambda p: (p["params"], -p["test_auc"]))
    out, best = [], -math.inf
    for p in ordered:
        if p["test_auc"] > best:
            out.append(p)
            best = p["test_auc"]
    return out


def auc_figure(points: list[dict], budget: dict | None) -> bytes:
    """Test AUC against embedding parameters: FDE points and their frontier, RaS, AutoDim
    candidates, the chosen AutoDim, the budget line."""
    fig = _canvas(8.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    fde = [p for p in points if p["kind"] == "fde"]
    if fde:
        line = frontier(fde)
        ax.plot([p["params"] for p in line], [p["test_auc"] for p in line], "-", color="#555",
                linewidth=1.2, label="FDE frontier", zorder=1)
        ax.scatter([p["params"] for p in fde], [p["test_auc"] for p in fde], marker="o",
                   color="#555", s=36, label="FDE", zorder=2)
    ras = [p for p in points if p["kind"] == "random"]
    if ras:
        ax.scatter([p["params"] for p in ras], [p["test_auc"] for p in ras], marker="x",
                   color="#9467bd", s=40, label="RaS", zorder=2)
    others = [p for p in points if p["kind"] == "autodim" and not p.get("chosen")]
    if others:
        ax.scatter([p["params"] for p in others], [p["test_auc"] for p in others], marker="^",
                   color="#ff7f0e", s=30, label="AutoDim candidates", zorder=3)
    chosen = [p for p in points if p.get("chosen")]
    if chosen:
        ax.scatter([p["params"] for p in chosen], [p["test_auc"] for p in chosen], marker="*",
                   color="#d62728", s=160, label="AutoDim", zorder=4)
    right = max((p["params"] for p in points), default=0) * 0.75
    for p in points:  # labels of the rightmost points to their left, inside the axes
        left = p["params"] > right
        ax.annotate(p["label"], (p["params"], p["test_auc"]), textcoords="offset points",
                    xytext=(-6 if left else 6, 4), ha="right" if left else "left", fontsize=8)
    if budget is not None:
        ax.axvline(budget["params"], color="#2ca02c", linestyle="--", linewidth=1.2,
                   label=f"budget {budget['params']:,}")
    xs = [p["params"] for p in points] + ([budget["params"]] if budget else [])
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.12)  # room for the labels
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("test AUC")
    ax.set_title("test AUC against embedding parameters", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}")


def alpha_figure(candidate_dims, chosen: int, history: dict | None, final) -> bytes:
    """One field's alpha probabilities over the search (one line per candidate, the chosen one
    thicker), or its final probabilities as bars when the events are gone."""
    fig = _canvas(3.0, 1.125, dpi=80)
    ax = fig.add_axes((0.13, 0.2, 0.85, 0.74))
    if history:
        steps = history["steps"]
        for j, d in enumerate(candidate_dims):
            ax.plot(steps, [row[j] for row in history["probs"]], color=COLOURS[j % 10],
                    linewidth=2.2 if d == chosen else 1.0)
        ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
    else:
        ax.bar(range(len(candidate_dims)), final,
               color=[COLOURS[j % 10] for j in range(len(candidate_dims))])
        ax.set_xticks(range(len(candidate_dims)), [str(d) for d in candidate_dims])
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1])
    ax.tick_params(labelsize=6, pad=1)
    ax.grid(True, alpha=0.3)
    return _png(fig)


def alpha_file(index: int, name: str) -> str:
    return f"alpha_{index:03d}_{safe_name(name)}.png"


def figures(data: dict) -> dict[str, bytes]:
    """{file name: PNG bytes}: the AUC picture (a run with retrained models) and one alpha
    chart per field."""
    out = {}
    if data["points"]:
        out[AUC_PLOT] = auc_figure(data["points"], data["budget"])
    dims = data["dims"]
    cands = [int(d) for d in dims["candidate_dims"]]
    for i, name in enumerate(dims["field_order"]):
        field = dims["fields"][name]
        final = field.get("probabilities") or [0.0] * len(cands)
        out[alpha_file(i, name)] = alpha_figure(cands, int(field["dim"]),
                                                data["alpha"].get(name), final)
    return out


# ----------------------------------------------------------------------------- HTML

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, cls: str) -> str:
    return (f'<img class="{cls}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _num(x, fmt: str) -> str:
    return "&ndash;" if x is None else _e(format(x, fmt))


def _table(header: list[str] | None, rows: list[list[str]], row_classes=None, left=1) -> str:
    """`rows` hold HTML already escaped; the first `left` columns are left-aligned."""
    def cells(tag, values):
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{v}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f'<tr{f" class={c}" if c else ""}>{cells("td", r)}</tr>'
                   for r, c in zip(rows, row_classes or [None] * len(rows)))
    head = f"<tr>{cells('th', [_e(h) for h in header])}</tr>" if header else ""
    return f"<table>{head}{body}</table>"


def _headline(data: dict) -> str:
    points = sorted(data["points"], key=lambda p: (not p.get("chosen"), p["kind"] != "fde",
                                                   p["params"]))
    fde = [p for p in points if p["kind"] == "fde"]
    ref = max(fde, key=lambda p: p["params"]) if fde else None
    header = ["model", "test AUC", "logloss", "emb params", "emb bytes (float32)"]
    if ref:
        header += [f"params vs {ref['label']}", f"AUC vs {ref['label']}"]
    rows, classes = [], []
    for p in points:
        row = [_e(p["label"]), _num(p["test_auc"], ".4f"), _num(p["test_logloss"], ".4f"),
               _num(p["params"], ","), _num(4 * p["params"], ",")]
        if ref:
            share = p["params"] / ref["params"] if ref["params"] else None
            row += [_num(None if share is None else 100 * share, ".1f") + "%",
                    _num(p["test_auc"] - ref["test_auc"], "+.4f")]
        rows.append(row)
        classes.append("chosen" if p.get("chosen") else None)
    parts = [_table(header, rows, classes)]
    parts.append(_export_block(data["export"]))
    return "\n".join(parts)


def _export_block(export: dict | None) -> str:
    if export is None:
        return '<p class="note">No SavedModel export in this run (pipeline.run --no_export).</p>'
    rows = [["SavedModel", _e(export["dir"])],
            ["size on disk", f"{_num(export['bytes'], ',')} bytes "
                             f"({_num(export['bytes'] / 2 ** 20, '.2f')} MiB)"]]
    lat = export.get("latency")
    if lat:
        rows += [[f"serving_default, batch of {lat['batch_rows']}",
                  f"median {_num(lat['batch_median_ms'], '.2f')} ms, "
                  f"p99 {_num(lat['batch_p99_ms'], '.2f')} ms"],
                 ["serving_default, 1 row", f"median {_num(lat['one_median_ms'], '.2f')} ms, "
                                            f"p99 {_num(lat['one_p99_ms'], '.2f')} ms"],
                 ["timed on", _e(f"{lat['rows_source']}; {lat['calls']} calls each after 3 "
                                 f"untimed, tf.saved_model.load in the report's process")]]
    else:
        rows.append(["serving latency", "not measured (--no_latency)"])
    return "<h3>The exported AutoDim model</h3>" + _table(None, rows, left=2)


def _search_block(dims: dict) -> str:
    fm = dims.get("final_metrics") or {}
    rows = [["backbone", _e(dims.get("backbone"))],
            ["candidate dimensions", _e(", ".join(str(d) for d in dims["candidate_dims"]))],
            ["derivation", _e((dims.get("derivation") or {}).get("method", "argmax"))],
            ["embedding parameters", _num(dims.get("embedding_params"), ",")],
            ["share of every field at the largest candidate",
             _num(None if dims.get("params_share") is None else 100 * dims["params_share"],
                  ".1f") + "%"],
            ["validation AUC of the derived architecture (search weights)",
             _num(fm.get("derived_valid_auc"), ".4f")],
            ["search steps", _num(dims.get("steps"), ",")]]
    return _table(None, rows, left=2)


def _budget_block(budget: dict | None) -> str:
    if budget is None:
        return ""
    rows = [["budget (embedding parameters)", _num(budget.get("params"), ",")]]
    if budget.get("requested") is not None:
        rows.append(["requested as", _e(json.dumps(budget["requested"], sort_keys=True))])
    if budget.get("achieved") is not None:
        rows.append(["achieved", _num(budget["achieved"], ",")])
    if budget.get("share_of_budget") is not None:
        rows.append(["share of the budget", _num(100 * budget["share_of_budget"], ".1f") + "%"])
    repair = budget.get("repair") or []
    rows.append(["repair steps", _e(str(len(repair))) if repair else "none"])
    out = "<h2>Parameter budget</h2>" + _table(None, rows, left=2)
    if repair:
        out += "<pre>" + _e("\n".join(json.dumps(r, sort_keys=True) for r in repair)) + "</pre>"
    return out


def _consensus_block(consensus: dict | None) -> str:
    if consensus is None:
        return ""
    seeds = consensus.get("seeds") or []
    rows = [["seeds", _e(", ".join(str(s) for s in seeds))],
            ["Pearson correlation of the chosen dimensions", _num(consensus.get("pearson"),
                                                                  ".3f")],
            ["Spearman correlation", _num(consensus.get("spearman"), ".3f")]]
    return ("<h2>Consensus across seeds</h2>" + _table(None, rows, left=2)
            + '<p class="note">The field table shows each seed\'s choice and the '
              "disagreement; the chosen dimension is the consensus.</p>")


def _fields_block(data: dict, pngs: dict) -> str:
    dims = data["dims"]
    cands = [int(d) for d in dims["candidate_dims"]]
    largest = max(cands)
    truth = (data["summary"] or {}).get("truth") or {}
    consensus = (data["consensus"] or {}).get("fields") or {}
    header = ["field", "vocabulary", "chosen dim"]
    if truth:
        header.append("planted latent dim (0: noise)")
    header += ["alpha over the search" if data["alpha"] else "alpha (final; no events found)",
               "emb params", f"saved vs d={largest}"]
    if consensus:
        header += ["dims per seed", "disagreement"]
    rows = []
    for i, name in enumerate(dims["field_order"]):
        f = dims["fields"][name]
        vocab = f.get("vocab_size")
        params = f.get("params", None if vocab is None else vocab * int(f["dim"]))
        full = f.get("full_params", None if vocab is None else vocab * largest)
        row = [_e(name), _num(vocab, ","), _e(f["dim"])]
        if truth:
            t = truth.get(name) or {}
            row.append(_e(t.get("latent_dim", "")) if t.get("informative") else "0")
        row.append(_img(pngs[alpha_file(i, name)], f"alpha of {name}", "alpha"))
        row += [_num(params, ","), _num(None if full is None or params is None
                                        else full - params, ",")]
        if consensus:
            c = consensus.get(name) or {}
            row += [_e(", ".join(str(d) for d in c.get("dims", []))),
                    _e(c.get("disagreement", ""))]
        rows.append(row)
    key = "".join(f'<span><b style="background:{COLOURS[j % 10]}"></b> d={d}</span>'
                  for j, d in enumerate(cands))
    note = ("alpha's probability of each candidate (y, 0..1) against the search step (x); "
            "the chosen dimension's line is thicker." if data["alpha"] else
            "the search's TensorBoard events were not found: dims.json's final probabilities.")
    return (f'<p class="key">{key}</p><p class="note">{_e(note)}</p>' + _table(header, rows))


def render(data: dict, pngs: dict) -> str:
    """The page: every text escaped, every plot a data: URI."""
    summary = data["summary"] or {}
    dims = data["dims"]
    dataset = summary.get("dataset") or dims.get("dataset") or "?"
    what = "pipeline.run workdir" if data["kind"] == "run" else "search model_dir"
    title = f"autodim report: {dataset}"
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="note">{_e(what)} {_e(data["dir"])}; preset '
             f'{_e(summary.get("preset", "n/a"))}; written {_e(written)} by '
             f"python -m pipeline.report</p>"]
    if data["kind"] == "run":
        parts += ["<h2>AutoDim against the baselines</h2>", _headline(data),
                  "<h2>Test AUC against embedding parameters</h2>",
                  _img(pngs[AUC_PLOT], "test AUC against embedding parameters", "figure")]
    parts += [f"<h2>The search ({_e(data['search_dir'])})</h2>", _search_block(dims),
              _budget_block(data["budget"]), _consensus_block(data["consensus"]),
              "<h2>Per field</h2>", _fields_block(data, pngs), "<h2>Config used</h2>"]
    if data["config"] is not None:
        parts.append("<pre>" + _e(json.dumps(data["config"], indent=2, sort_keys=True))
                     + "</pre>")
    else:
        parts.append('<p class="note">config.json not found in the search directory.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
