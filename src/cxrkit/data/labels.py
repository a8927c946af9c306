"""Label policies: named, tested objects that turn an index's raw labels into targets and a mask.

An index keeps raw tri-state labels: 1 (positive), 0 (negative), -1 (uncertain), NaN (not
mentioned). A :class:`LabelPolicy` decides, in this order:

1. **views**: which rows are kept (``all``, ``frontal``, ``lateral``, ``ap``, ``pa``);
2. **hierarchy**: child findings update their parents on the raw labels (DESIGN.md's tree);
3. **uncertain**: what -1 becomes (``ones``, ``zeros``, ``ignore``, ``multiclass``,
   ``smooth_ones``, ``smooth_zeros``), with per-finding overrides;
4. **blank**: what NaN becomes (``zero`` or ``ignore``);
5. **No Finding**: kept as the dataset says, or derived from the other targets;
6. **findings**: the target set; a finding the dataset does not label is masked, never negative.

The result is a :class:`Targets`: ``y`` (N, L) float32 and ``mask`` (N, L) bool, where a false
mask entry means "no label: contributes nothing to loss or metrics".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrkit.core.errors import CxrkitError, closest, did_you_mean
from cxrkit.core.findings import (
    NO_FINDING,
    NON_PATHOLOGY,
    PARENT,
    hierarchy_order,
    resolve_findings,
)
from cxrkit.data.index import finding_columns

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore", "multiclass", "smooth_ones", "smooth_zeros")
BLANK_POLICIES = ("zero", "ignore")
HIERARCHY_POLICIES = ("positive", "propagate", "none")
VIEW_POLICIES = ("all", "frontal", "lateral", "ap", "pa")
NO_FINDING_POLICIES = ("dataset", "derive")
#: Datasets whose labels follow the CheXpert hierarchy (the hierarchy rule applies to their rows).
HIERARCHY_DATASETS = ("chexpert", "mimic")

#: Ranges of the smoothed uncertain labels (Pham et al. 2019, "label smoothing regularization").
SMOOTH_RANGES = {"smooth_ones": (0.55, 0.85), "smooth_zeros": (0.0, 0.3)}

#: Class indices of the ``multiclass`` policy's 3-class target.
MULTICLASS_NEGATIVE, MULTICLASS_POSITIVE, MULTICLASS_UNCERTAIN = 0, 1, 2


def _check_option(param: str, value: object, options: Sequence[str]) -> str:
    """Return ``value`` as one of ``options`` (case-insensitive), or raise with a suggestion."""
    text = str(value).strip()
    for option in options:
        if text.lower() == option.lower():
            return option
    close = closest(text, options)
    hint = f" Did you mean '{close}'?" if close else ""
    raise CxrkitError(
        f"The '{param}' policy must be one of {{{', '.join(options)}}}. Got '{value}' instead.{hint}"
    )


@dataclass(frozen=True)
class LabelPolicy:
    """How raw tri-state labels become targets. See the module docstring for the order of steps.

    Attributes:
        uncertain: default treatment of -1 labels.
        uncertain_per_finding: overrides of ``uncertain`` for named findings, e.g.
            ``{"Atelectasis": "ones", "Edema": "ones"}`` with ``uncertain="zeros"``.
        blank: treatment of NaN (not mentioned) labels: ``zero`` (the thesis) or ``ignore``.
        hierarchy: ``positive`` (the thesis: a positive or uncertain child makes its parent
            positive), ``propagate`` (a positive child makes its parent positive, an uncertain child
            makes a negative or blank parent uncertain) or ``none``.
        views: rows kept: ``all``, ``frontal`` (AP and PA), ``lateral``, ``ap`` or ``pa``.
        findings: target findings: ``all`` (every finding the index labels), a set name
            (``competition``, ``chexpert``, ``nih``) or a list of canonical names.
        no_finding: ``dataset`` keeps the dataset's own "No Finding" column; ``derive`` recomputes
            it as 1 when no pathology target is positive after the policy and 0 otherwise.
        seed: seed of the smoothed uncertain labels.
    """

    uncertain: str = "ones"
    uncertain_per_finding: Mapping[str, str] = field(default_factory=dict)
    blank: str = "zero"
    hierarchy: str = "positive"
    views: str = "all"
    findings: str | tuple[str, ...] = "all"
    no_finding: str = "dataset"
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "uncertain", _check_option("uncertain", self.uncertain, UNCERTAIN_POLICIES))
        if not isinstance(self.uncertain_per_finding, Mapping):
            raise CxrkitError(
                "'uncertain_per_finding' must map finding names to policies, e.g. {Edema: ones}."
            )
        set_(
            self,
            "uncertain_per_finding",
            {
                str(f): _check_option(f"uncertain for '{f}'", v, UNCERTAIN_POLICIES)
                for f, v in self.uncertain_per_finding.items()
            },
        )
        set_(self, "blank", _check_option("blank", self.blank, BLANK_POLICIES))
        set_(self, "hierarchy", _check_option("hierarchy", self.hierarchy, HIERARCHY_POLICIES))
        set_(self, "views", _check_option("views", self.views, VIEW_POLICIES))
        set_(self, "no_finding", _check_option("no_finding", self.no_finding, NO_FINDING_POLICIES))
        if isinstance(self.findings, (list, tuple)):
            set_(self, "findings", tuple(str(f) for f in self.findings))
        elif not isinstance(self.findings, str):
            raise CxrkitError(
                f"'findings' must be a name (all, competition, chexpert, nih) or a list of findings; "
                f"got {self.findings!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CxrkitError(
                f"The policy 'seed' must be an integer, 0 or more. Got {self.seed!r} instead."
            )

    # ---- description -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict, as written to YAML and saved with every run."""
        d = dataclasses.asdict(self)
        d["findings"] = self.findings if isinstance(self.findings, str) else list(self.findings)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelPolicy:
        """Build a policy from a dict; unknown keys are an error with a suggestion.

        ``uncertain`` may also be a mapping ``{default: zeros, Atelectasis: ones, ...}``.
        """
        if not isinstance(data, Mapping):
            raise CxrkitError(
                f"a label policy must be a mapping of options; got {type(data).__name__}."
            )
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise CxrkitError(did_you_mean(str(key), names, what="label policy key"))
            kwargs[key] = value
        unc = kwargs.get("uncertain")
        if isinstance(unc, Mapping):
            unc = dict(unc)
            kwargs["uncertain"] = unc.pop("default", "ones")
            kwargs["uncertain_per_finding"] = {**kwargs.get("uncertain_per_finding", {}), **unc}
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> LabelPolicy:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise CxrkitError(f"label policy file '{path}' does not exist.") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise CxrkitError(
                f"label policy file '{path}' is not valid YAML{where}: {problem}."
            ) from None
        return cls.from_dict(data or {})

    @classmethod
    def from_spec(cls, spec: str | None) -> LabelPolicy:
        """A preset name (see :data:`PRESETS`), a YAML file path, or ``None`` for the default."""
        if spec is None:
            return cls()
        if spec in PRESETS:
            return PRESETS[spec]
        if spec.endswith((".yaml", ".yml")) or Path(spec).exists():
            return cls.from_yaml(spec)
        raise CxrkitError(
            did_you_mean(spec, list(PRESETS), what="label policy")
            + " Or give the path of a policy YAML file."
        )

    def uncertain_for(self, finding: str) -> str:
        return self.uncertain_per_finding.get(finding, self.uncertain)

    # ---- application ------------------------------------------------------------------------
    def apply(self, index: pd.DataFrame, available: Sequence[str] | None = None) -> Targets:
        """Turn an index (one row per image, one float column per finding) into :class:`Targets`.

        Args:
            index: the index frame; finding columns hold 1 / 0 / -1 / NaN.
            available: the findings the dataset labels (default: every canonical finding column in
                ``index``). A target finding outside it is masked everywhere.
        """
        if available is None:
            available = finding_columns(index)
        available = list(available)
        targets = resolve_findings(
            self.findings if isinstance(self.findings, str) else list(self.findings), available
        )
        for finding in self.uncertain_per_finding:
            if finding not in targets and finding not in available:
                resolve_findings([finding], available)  # raises with a suggestion if unknown

        rows = np.flatnonzero(select_views(index, self.views))
        raw = {f: index[f].to_numpy(np.float32)[rows].copy() for f in available}
        if self.hierarchy != "none":
            # The tree is CheXpert's labelling convention (MIMIC-CXR uses the same labeler); NIH
            # and generic labels were not made with it, so their rows are left as labelled.
            follows = index["dataset"].isin(HIERARCHY_DATASETS).to_numpy(bool)[rows]
            if follows.any():
                apply_hierarchy(raw, mode=self.hierarchy, rows=follows)

        n, n_labels = len(rows), len(targets)
        y = np.zeros((n, n_labels), np.float32)
        mask = np.zeros((n, n_labels), bool)
        multiclass = np.zeros(n_labels, bool)
        rng = np.random.default_rng(self.seed)
        smooth = rng.random((n, n_labels), dtype=np.float32)  # drawn once: same values per seed
        for j, finding in enumerate(targets):
            if finding not in raw:
                continue  # not labelled by this dataset: masked, never negative
            col = raw[finding]
            pos, neg, unc, blank = col == 1, col == 0, col == -1, np.isnan(col)
            policy = self.uncertain_for(finding)
            y[pos, j] = 1.0
            mask[pos | neg, j] = True
            if policy == "ones":
                y[unc, j] = 1.0
                mask[unc, j] = True
            elif policy == "zeros":
                mask[unc, j] = True
            elif policy == "multiclass":
                y[unc, j] = MULTICLASS_UNCERTAIN
                mask[unc, j] = True
                multiclass[j] = True
            elif policy in SMOOTH_RANGES:
                lo, hi = SMOOTH_RANGES[policy]
                y[unc, j] = lo + (hi - lo) * smooth[unc, j]
                mask[unc, j] = True
            # "ignore": uncertain stays masked
            if self.blank == "zero":
                mask[blank, j] = True
        if self.no_finding == "derive" and NO_FINDING in targets:
            _derive_no_finding(y, mask, targets, multiclass)
        return Targets(
            y=y, mask=mask, findings=targets, rows=rows, multiclass=multiclass, policy=self
        )


def _derive_no_finding(
    y: np.ndarray, mask: np.ndarray, targets: list[str], multiclass: np.ndarray
) -> None:
    j_nf = targets.index(NO_FINDING)
    pathology = [j for j, f in enumerate(targets) if f not in NON_PATHOLOGY]
    if not pathology:
        raise CxrkitError(
            "no_finding: derive needs at least one pathology finding among the targets; "
            "add findings or use no_finding: dataset."
        )
    sub_y, sub_m = y[:, pathology], mask[:, pathology]
    positive = np.where(multiclass[pathology], sub_y == MULTICLASS_POSITIVE, sub_y >= 0.5) & sub_m
    any_pos = positive.any(axis=1)
    all_known = sub_m.all(axis=1)
    # Positive somewhere: certainly not "no finding". All known and none positive: no finding.
    # Otherwise (some unlabelled, none positive) the answer is unknown: masked.
    y[:, j_nf] = (~any_pos & all_known).astype(np.float32)
    mask[:, j_nf] = any_pos | all_known


def select_views(index: pd.DataFrame, views: str) -> np.ndarray:
    """Boolean row selector for a views policy."""
    _check_option("views", views, VIEW_POLICIES)
    if views == "all":
        return np.ones(len(index), bool)
    if views in ("frontal", "lateral"):
        return (index["view"] == views).fillna(False).to_numpy(bool)
    return (index["projection"].str.upper() == views.upper()).fillna(False).to_numpy(bool)


def apply_hierarchy(
    raw: dict[str, np.ndarray], mode: str = "positive", rows: np.ndarray | None = None
) -> None:
    """Make parents consistent with their children, in place, on raw tri-state columns.

    ``positive`` (the thesis): a child at 1 or -1 sets its parent to 1. ``propagate``: a child at 1
    sets the parent to 1; a child at -1 lifts a parent that is 0 or blank to -1. Children are
    visited deepest first so the rule carries up the tree. A parent the dataset does not label
    stays unlabelled (it is masked later): a child cannot tell us the parent's negatives.
    ``rows`` (bool) limits the rule to those rows.
    """
    _check_option("hierarchy", mode, HIERARCHY_POLICIES)
    if mode == "none":
        return
    for child in hierarchy_order():
        parent = PARENT[child]
        if child not in raw or parent not in raw:
            continue
        c, p = raw[child], raw[parent]
        scope = np.ones(len(c), bool) if rows is None else rows
        if mode == "positive":
            p[((c == 1) | (c == -1)) & scope] = 1.0
        else:
            p[(c == 1) & scope] = 1.0
            p[(c == -1) & ((p == 0) | np.isnan(p)) & scope] = -1.0


@dataclass
class Targets:
    """The output of a label policy.

    Attributes:
        y: (N, L) float32 targets; for ``multiclass`` findings a class index (0 negative,
            1 positive, 2 uncertain); for smoothed findings a soft target in [0, 1].
        mask: (N, L) bool, False where there is no label.
        findings: the L target findings, in column order.
        rows: (N,) positions of the kept rows in the index.
        multiclass: (L,) bool, which findings use the 3-class target.
        policy: the policy that made them.
    """

    y: np.ndarray
    mask: np.ndarray
    findings: list[str]
    rows: np.ndarray
    multiclass: np.ndarray
    policy: LabelPolicy


def label_table(index: pd.DataFrame, targets: Targets) -> pd.DataFrame:
    """Per-finding counts, the thesis's frequency table with the policy's effect.

    Columns: ``positive`` / ``negative`` after the policy (soft targets count as positive when
    >= 0.5), ``uncertain`` and ``blank`` in the raw labels of the kept rows, ``masked`` after the
    policy, ``neg_pos_ratio`` (negatives per positive; None when there is no positive), and
    ``labelled`` (False for a finding the dataset does not label: all masked).
    """
    out = []
    for j, finding in enumerate(targets.findings):
        m = targets.mask[:, j]
        yj = targets.y[:, j]
        if targets.multiclass[j]:
            pos = int(((yj == MULTICLASS_POSITIVE) & m).sum())
            neg = int(((yj == MULTICLASS_NEGATIVE) & m).sum())
        else:
            pos = int(((yj >= 0.5) & m).sum())
            neg = int(((yj < 0.5) & m).sum())
        labelled = finding in index.columns
        if labelled:
            raw = index[finding].to_numpy(np.float32)[targets.rows]
            unc, blank = int((raw == -1).sum()), int(np.isnan(raw).sum())
        else:
            unc = blank = 0
        out.append(
            {
                "finding": finding,
                "labelled": labelled,
                "positive": pos,
                "negative": neg,
                "uncertain": unc,
                "blank": blank,
                "masked": int((~m).sum()),
                "neg_pos_ratio": (neg / pos) if pos else None,
            }
        )
    return pd.DataFrame(out)


#: Named policies. ``thesis`` is the thesis's setting: uncertain as positive, blanks as negative,
#: the hierarchy fix, all views, the five competition findings.
PRESETS: dict[str, LabelPolicy] = {
    "default": LabelPolicy(),
    "thesis": LabelPolicy(findings="competition"),
    "u-ones": LabelPolicy(uncertain="ones"),
    "u-zeros": LabelPolicy(uncertain="zeros"),
    "u-ignore": LabelPolicy(uncertain="ignore"),
    "u-multiclass": LabelPolicy(uncertain="multiclass"),
    "u-smooth-ones": LabelPolicy(uncertain="smooth_ones"),
    "chexpert-competition": LabelPolicy(
        uncertain="zeros",
        uncertain_per_finding={"Atelectasis": "ones", "Edema": "ones"},
        hierarchy="none",
        views="frontal",
        findings="competition",
    ),
}
