"""The report's sections (HTML and Markdown tables, the gallery) and the page around them."""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError
from cxrkit.core.notice import NOTICE
from cxrkit.evaluate.results import LABEL_PREFIX, DataSummary, LevelMetrics
from cxrkit.evaluate.tables import ci_text, table
from cxrkit.report.figures import Figure, fig_gallery, fig_prevalence, ordered_parts

log = logging.getLogger(__name__)


@dataclass
class Section:
    """A report section: a title, HTML/Markdown blocks and figures, in order."""

    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def metrics_section(metrics: LevelMetrics, level: str, findings: list[str]) -> Section:
    """The metrics tables of one level: per finding, averages, Table 2 and Tables 3-10."""
    sec = Section(f"Metrics ({level} level)")
    avg = metrics.average
    lvl = int(round(metrics.level * 100))
    rows = []
    for f in findings:
        m = metrics.findings[f]
        rows.append(
            [
                f,
                m.positives,
                m.negatives,
                ci_text(m.auroc, m.auroc_ci),
                ci_text(m.auroc, m.auroc_ci_delong),
                ci_text(m.auprc, m.auprc_ci),
                m.threshold,
                m.sensitivity,
                m.specificity,
                m.ppv,
                m.npv,
                m.f1,
                m.accuracy,
                m.undefined or "",
            ]
        )
    h, md = table(
        [
            "finding",
            "pos",
            "neg",
            f"AUROC [{lvl} % CI, bootstrap]",
            "AUROC [DeLong CI]",
            "AUPRC [CI]",
            "threshold",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "F1",
            "accuracy",
            "note",
        ],
        rows,
        f"Per finding, {metrics.n_images} {'studies' if level == 'study' else 'images'}, "
        f"{metrics.n_bootstrap} bootstrap resamples over "
        f"{metrics.n_groups} patients.",
    )
    sec.html.append(h)
    sec.md.append(md)
    h, md = table(
        ["average", "value"],
        [
            ["multilabel (macro) AUROC", ci_text(avg.macro_auroc, avg.macro_auroc_ci)],
            ["micro AUROC", ci_text(avg.micro_auroc, avg.micro_auroc_ci)],
            [
                f"competition mean AUROC ({len(avg.competition_findings or [])} of 5)",
                ci_text(avg.competition_auroc, avg.competition_auroc_ci),
            ],
            ["macro AUPRC", avg.macro_auprc],
            ["macro sensitivity", avg.macro_sensitivity],
            ["macro specificity", avg.macro_specificity],
            ["macro F1", avg.macro_f1],
        ],
        "Averages over the findings whose AUROC is defined.",
    )
    sec.html.append(h)
    sec.md.append(md)
    tot = metrics.confusion_total
    h, md = table(
        ["TP", "FN", "TN", "FP", "sensitivity", "specificity", "F1", "accuracy"],
        [
            [
                tot.tp,
                tot.fn,
                tot.tn,
                tot.fp,
                tot.sensitivity,
                tot.specificity,
                tot.f1,
                tot.accuracy,
            ]
        ],
        "Confusion matrix summed over findings (the thesis's Table 2).",
    )
    sec.html.append(h)
    sec.md.append(md)
    head = ["", *findings]
    rows = [
        [name, *[getattr(metrics.findings[f], key) for f in findings]]
        for name, key in (
            ("TP", "tp"),
            ("FP", "fp"),
            ("FN", "fn"),
            ("TN", "tn"),
            ("true positive rate", "sensitivity"),
            ("true negative rate", "specificity"),
            ("F-score", "f1"),
        )
    ]
    h, md = table(head, rows, "Per finding at the operating point (the thesis's Tables 3–10).")
    sec.html.append(h)
    sec.md.append(md)
    return sec


def data_sections(data: DataSummary) -> list[Section]:
    """Class frequencies after the policy and the split report, as evaluation wrote them."""
    sec = Section("Data")
    sec.html.append(
        f"<p>Index <code>{html.escape(data.index)}</code>: "
        f"{data.images:,} images, {data.patients:,} patients; "
        f"{data.kept:,} kept by the label policy.</p>"
    )
    rows = [
        [
            r["finding"],
            r["positive"],
            r["negative"],
            r["uncertain"],
            r["blank"],
            r["masked"],
            r["neg_pos_ratio"],
        ]
        for r in data.label_table
    ]
    h, md = table(
        ["finding", "positive", "negative", "uncertain (raw)", "blank (raw)", "masked", "neg:pos"],
        rows,
        "Class frequencies after the label policy (whole set).",
    )
    sec.html.append(h)
    sec.md.append(md)
    rep = data.split_report
    parts = ordered_parts(rep["parts"])
    sp = Section("Split")
    rows = [[p, rep["images"][p], rep["kept_images"][p], rep["patients"][p]] for p in parts]
    h, md = table(
        ["part", "images", "kept by policy", "patients"],
        rows,
        "Patient-grouped parts (no patient in two parts).",
    )
    sp.html.append(h)
    sp.md.append(md)
    rows = [
        [
            f,
            *[rep["findings"][f]["positives"][p] for p in parts],
            *[rep["findings"][f]["prevalence"][p] for p in parts],
            rep["findings"][f]["max_dev_pp"],
        ]
        for f in rep["findings"]
    ]
    h, md = table(
        [
            "finding",
            *[f"pos {p}" for p in parts],
            *[f"prev {p}" for p in parts],
            "max dev (pp)",
        ],
        rows,
        "Positives and prevalence per part.",
    )
    sp.html.append(h)
    sp.md.append(md)
    sp.figures.append(Figure("prevalence", "Prevalence per part.", fig_prevalence(rep)))
    for w in rep.get("warnings", []):
        sp.html.append(f"<p class='warn'>{html.escape(w)}</p>")
        sp.md.append(f"> {w}\n")
    return [sec, sp]


#: the report's sections, in the one order every report lists them (those a report has);
#: "Metrics" covers "Metrics (study level)" and "Metrics (image level)"
SECTION_ORDER: tuple[str, ...] = (
    "Model and training",
    "Scored files",
    "Data",
    "Split",
    "Metrics",
    "Curves",
    "Readers",
    "Calibration",
    "Gallery",
)


def readers_section(readers: dict) -> Section:
    """The model against human readers, per finding (see :mod:`cxrkit.evaluate.readers`)."""
    sec = Section("Readers")
    for f, c in readers.items():
        rows = []
        for r in c.readers:
            m = r.model_at_reader_specificity
            rows.append(
                [
                    r.name,
                    ci_text(
                        r.stats["sensitivity"].value,
                        [r.stats["sensitivity"].lo, r.stats["sensitivity"].hi],
                    ),
                    ci_text(
                        r.stats["specificity"].value,
                        [r.stats["specificity"].lo, r.stats["specificity"].hi],
                    ),
                    r.stats["ppv"].value,
                    r.stats["f1"].value,
                    "yes" if r.below_model_curve else "no",
                    ci_text(m.model.value, [m.model.lo, m.model.hi]),
                    m.mcnemar_p,
                ]
            )
        caption = (
            f"{f}: {c.n:,} cases ({c.positives:,} positive); {c.readers_below_curve} of "
            f"{len(c.readers)} readers below the model's ROC curve"
        )
        if c.f1_difference.value is not None:
            d = c.f1_difference
            caption += (
                f"; model F1 minus mean reader F1 {ci_text(d.value, [d.lo, d.hi])}, "
                f"p = {c.f1_p:.3g}"
            )
        h, md = table(
            ["reader", "sensitivity", "specificity", "PPV", "F1", "below ROC",
             "model sensitivity at the reader's specificity", "McNemar p"],
            rows,
            caption + ".",
        )  # fmt: skip
        sec.html.append(h)
        sec.md.append(md)
    return sec


def section_rank(title: str) -> int:
    """A section's place in :data:`SECTION_ORDER` (a title may add `` (…)`` to its entry)."""
    for i, name in enumerate(SECTION_ORDER):
        if title == name or title.startswith(name + " ("):
            return i
    raise ValueError(f"section '{title}' has no place in SECTION_ORDER")


#: a Grad-CAM map from a feature map coarser than this (per side) gets a caveat under it
CAM_MIN_MAP_SIDE = 8
#: thumbnails per finding and kind (true / false positives) in the gallery
GALLERY_PER_KIND = 4


def cam_caveat(map_size: tuple[int, int] | None) -> str | None:
    """The caveat under a Grad-CAM image whose feature map is coarser than
    :data:`CAM_MIN_MAP_SIDE` × :data:`CAM_MIN_MAP_SIDE`, else None."""
    if map_size is None:
        return None
    h, w = int(map_size[0]), int(map_size[1])
    if min(h, w) >= CAM_MIN_MAP_SIDE:
        return None
    return (
        f"Caveat: these heatmaps come from a {h}×{w} feature map (coarser than "
        f"{CAM_MIN_MAP_SIDE}×{CAM_MIN_MAP_SIDE}), upsampled to the image: each cell spans about "
        f"1/{max(w, 1)} of the width, so a map shows a region, not a lesion's outline."
    )


def _gallery_line(f: str, thr: float, found: dict[str, int], drawn: dict[str, int]) -> str | None:
    """Why a finding's true or false positives are not shown (None: both are)."""
    why = []
    for kind, label in (("tp", "true positive"), ("fp", "false positive")):
        if drawn[kind]:
            continue
        if not found[kind]:
            why.append(f"no {label} at the operating point (threshold {thr:.3f})")
        else:
            why.append(f"the {found[kind]} highest-scoring {label}s could not be read")
    if not why:
        return None
    shown = "not shown" if not (drawn["tp"] or drawn["fp"]) else "partly shown"
    return f"{f}: {shown}: {'; '.join(why)}."


def gallery_section(
    pred: pd.DataFrame,
    findings: list[str],
    artifact: Path,
    thresholds: dict[str, Any],
    image_root: Path,
) -> Section:
    """Highest-scoring true and false positives of every finding, read from the original images
    by path through :class:`cxrkit.use.explain.Explainer` (with its Grad-CAM maps).

    A finding (or kind) with no image gets one line saying why (no true positive at the operating
    point, say); without the model or the images, the section is one line saying so. A figure whose
    maps come from a feature map coarser than 8×8 carries :func:`cam_caveat`.
    """
    from cxrkit.use.explain import Explainer

    img_rows = pred[pred["level"] == "image"]
    sec = Section("Gallery")
    try:
        ex = Explainer(artifact)
    except CxrkitError as e:
        log.warning("gallery left out: %s", e)
        sec.html.append(
            f"<p>No gallery: the model could not be loaded ({html.escape(str(e))}).</p>"
        )
        sec.md.append(f"No gallery: the model could not be loaded ({e}).\n")
        return sec
    sec.html.append(
        "<p>The highest-scoring true positives and false positives of each finding on "
        "the evaluated part, with Grad-CAM heatmaps.</p>"
    )
    lines: list[str] = []
    missing = 0
    for f in findings:
        lab = img_rows[LABEL_PREFIX + f].to_numpy(float)
        s = img_rows[f].to_numpy(float)
        thr = thresholds.get(f)
        thr = 0.5 if thr is None else float(thr)
        found = {"tp": 0, "fp": 0}
        drawn = {"tp": 0, "fp": 0}
        for key, kind, want in (("tp", "true positives", 1.0), ("fp", "false positives", 0.0)):
            sel = np.flatnonzero((lab == want) & (s >= thr))
            sel = sel[np.argsort(-s[sel])][:GALLERY_PER_KIND]
            found[key] = len(sel)
            items = []
            sizes = []
            for i in sel:
                rel = img_rows["path"].iat[int(i)] if "path" in img_rows else None
                path = None if rel is None else image_root / str(rel)
                if path is None or not path.is_file():
                    missing += 1
                    continue
                try:
                    e = ex.explain_file(path, f)
                except CxrkitError:
                    missing += 1
                    continue
                items.append((f"p={s[i]:.2f}", e["gray"], e["heatmap_image"]))
                sizes.append(ex.cam.map_size)
            drawn[key] = len(items)
            if items:
                coarsest = min((z for z in sizes if z), key=lambda z: z[0] * z[1], default=None)
                sec.figures.append(
                    Figure(
                        f"gallery-{len(sec.figures)}",
                        f"{f}: {kind}, highest scores at threshold {thr:.3f}.",
                        fig_gallery(items, f"{f}: {kind}"),
                        note=cam_caveat(coarsest),
                    )
                )
        line = _gallery_line(f, thr, found, drawn)
        if line:
            lines.append(line)
    if not sec.figures and missing:
        line = "No gallery: the original images are not available at their indexed paths."
        sec.html[:] = [f"<p>{line}</p>"]
        sec.md[:] = [line + "\n"]
        return sec
    if lines:
        sec.html.append(
            "<ul class='gallery-missing'>"
            + "".join(f"<li>{html.escape(x)}</li>" for x in lines)
            + "</ul>"
        )
        sec.md.append("".join(f"- {x}\n" for x in lines))
    return sec


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em} caption{text-align:left;font-style:italic;
padding:.3em 0} th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} figure{margin:1em 0} figure img{max-width:100%}
figcaption{font-size:.85em;color:#555} .notice{background:#fff4e5;border:1px solid #f0b070;
padding:.5em 1em;border-radius:4px} .warn{color:#a33} code{background:#f6f6f6;padding:0 .2em}
"""


def render_page(title: str, intro: list[str], sections: list[Section]) -> tuple[str, str]:
    """The HTML page (figures as data URIs, inline style) and the Markdown text."""
    h = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='notice'>{html.escape(NOTICE)}</p>",
        *intro,
    ]
    md = [f"# {title}\n", f"> {NOTICE}\n"]
    ids = [
        sec.title.lower().replace(" ", "-").replace("(", "").replace(")", "") for sec in sections
    ]
    h.append(
        "<p class='contents'>Sections, in this order: "
        + " · ".join(
            f"<a href='#{html.escape(i)}'>{html.escape(sec.title)}</a>"
            for i, sec in zip(ids, sections, strict=True)
        )
        + ".</p>"
    )
    md.append("Sections, in this order: " + " · ".join(sec.title for sec in sections) + ".\n")
    for sid, sec in zip(ids, sections, strict=True):
        h.append(f"<h2 id='{html.escape(sid)}'>{html.escape(sec.title)}</h2>")
        md.append(f"## {sec.title}\n")
        h.extend(sec.html)
        md.extend(sec.md)
        for fig in sec.figures:
            data = base64.b64encode(fig.png).decode()
            h.append(
                f"<figure id='fig-{html.escape(fig.id)}'><img alt='{html.escape(fig.caption)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(fig.caption)}"
                "</figcaption>"
                + (f"<p class='warn'>{html.escape(fig.note)}</p>" if fig.note else "")
                + "</figure>"
            )
            md.append(f"![{fig.caption}](figures/{fig.id}.png)\n")
            if fig.note:
                md.append(f"> {fig.note}\n")
    h.append(f"<p><small>cxrkit {__version__}</small></p></body></html>")
    return "\n".join(h), "\n".join(md)
