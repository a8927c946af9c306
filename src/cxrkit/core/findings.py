"""Canonical finding names, every dataset's aliases for them, and the CheXpert hierarchy.

Every dataset adapter maps its own label names onto these; a finding a dataset does not label is
absent from its index (and masked by a label policy), never negative.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxrkit.core.errors import CxrkitError, did_you_mean

NO_FINDING = "No Finding"

#: The 14 CheXpert / MIMIC-CXR labels, in the datasets' own column order.
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: NIH ChestX-ray14 label names as they appear in its CSV, mapped to canonical names.
NIH_NAMES: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Pleural_Thickening": "Pleural Thickening",
    "Hernia": "Hernia",
    "No Finding": "No Finding",
}

#: Canonical finding names in the NIH dataset's order, "No Finding" first.
NIH_FINDINGS: tuple[str, ...] = ("No Finding",) + tuple(
    v for k, v in NIH_NAMES.items() if k != "No Finding"
)

#: All canonical findings: the CheXpert set, then the findings only NIH labels.
FINDINGS: tuple[str, ...] = CHEXPERT_FINDINGS + tuple(
    f for f in NIH_FINDINGS if f not in CHEXPERT_FINDINGS
)

#: The five CheXpert competition findings.
COMPETITION_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

#: Named finding sets usable wherever a list of findings is expected.
FINDING_SETS: dict[str, tuple[str, ...]] = {
    "competition": COMPETITION_FINDINGS,
    "chexpert": CHEXPERT_FINDINGS,
    "nih": NIH_FINDINGS,
}

#: child -> parent, the CheXpert label hierarchy.
PARENT: dict[str, str] = {
    "Cardiomegaly": "Enlarged Cardiomediastinum",
    "Edema": "Lung Opacity",
    "Consolidation": "Lung Opacity",
    "Lung Lesion": "Lung Opacity",
    "Atelectasis": "Lung Opacity",
    "Pneumonia": "Consolidation",
}

#: Findings that are not a disease: they do not count against "No Finding" when it is derived.
NON_PATHOLOGY: frozenset[str] = frozenset({"No Finding", "Support Devices"})

#: Other spellings met in the wild (NIH bounding boxes say "Infiltrate").
_ALIASES: dict[str, str] = {
    **{k: v for k, v in NIH_NAMES.items()},
    "Infiltrate": "Infiltration",
    "Enlarged Cardiom.": "Enlarged Cardiomediastinum",
    "Pleural Thickening": "Pleural Thickening",
    "Effusion": "Pleural Effusion",
    "Normal": "No Finding",
}


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


_LOOKUP: dict[str, str] = {_key(f): f for f in FINDINGS} | {_key(k): v for k, v in _ALIASES.items()}


def canonical_name(name: str, *, strict: bool = True) -> str | None:
    """Map any known spelling of a finding to its canonical name.

    Matching ignores case, underscores and hyphens. An unknown name raises :class:`CxrkitError`
    with the closest canonical name, or returns ``None`` when ``strict`` is false.
    """
    found = _LOOKUP.get(_key(name))
    if found is None and strict:
        raise CxrkitError(did_you_mean(name, FINDINGS, what="finding"))
    return found


def resolve_findings(spec: str | Iterable[str] | None, available: Iterable[str]) -> list[str]:
    """Turn a findings spec into canonical names.

    Args:
        spec: ``None`` or ``"all"`` (every finding in ``available``), a set name (``competition``,
            ``chexpert``, ``nih``), a comma-separated string, or an iterable of names.
        available: the findings an index labels; used for ``all`` and kept in canonical order.

    Returns:
        Canonical names without duplicates, in the order given.
    """
    available = list(available)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return available
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in FINDING_SETS:
            return list(FINDING_SETS[key])
        spec = [s for s in (p.strip() for p in spec.split(",")) if s]
    out: list[str] = []
    for name in spec:
        if name.lower() in FINDING_SETS:
            names = FINDING_SETS[name.lower()]
        else:
            canon = canonical_name(name, strict=False)
            if canon is None and name in available:
                canon = name  # a custom finding from a generic CSV
            if canon is None:
                options = [
                    *FINDING_SETS,
                    "all",
                    *FINDINGS,
                    *(a for a in available if a not in FINDINGS),
                ]
                raise CxrkitError(
                    did_you_mean(name, options, what="finding")
                    + " Fix the findings list (or use a set name: competition, chexpert, nih, all)."
                )
            names = (canon,)
        out.extend(n for n in names if n not in out)
    if not out:
        raise CxrkitError("the findings list is empty: name at least one finding, or 'all'.")
    return out


def hierarchy_order() -> list[str]:
    """Children ordered deepest first, so one pass propagates transitively (Pneumonia → ... → Lung Opacity)."""

    def depth(f: str) -> int:
        d = 0
        while f in PARENT:
            f = PARENT[f]
            d += 1
        return d

    return sorted(PARENT, key=depth, reverse=True)
