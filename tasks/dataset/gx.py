"""The dataset gate: a Great Expectations suite over the examples table (GX Core 1.x, ephemeral, pandas).

The only module that imports great_expectations, and only when a gate runs (the import costs seconds).
Each expectation carries a ``meta.name`` the reports use and GX's own ``severity``: critical ones
block the dataset, warnings are reported and pass. Checks that need more than one row at a time
(card numbers by Luhn, groups present in both splits, label drift) are computed into derived columns
by pandas here and asserted by GX, so the published GX result holds every decision.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tasks.settings import DatasetSettings

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# a separated number ending in 4 digits: "555-123-4567", "(555) 123 4567", "+44 20 7946 0958"; not "10 000 000",
# and not three groups out of a longer run such as a spaced card or order number
PHONE = (r"(?<![\w.])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{4}"
         r"(?![ .-]?\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# issuer prefixes and lengths (Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay): with Luhn, an order id
# such as Bitext's 113542617735902 (Luhn-valid by chance) is not taken for a card
_CARD_ISSUER = re.compile(r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}"
                          r"|3[47]\d{13}|3(?:0[0-5]|[68]\d)\d{11,13}|6(?:011|5\d\d|4[4-9]\d)\d{12,15}"
                          r"|35(?:2[89]|[3-8]\d)\d{12,15}|62\d{14,17}")
REQUIRED = ("id", "question", "response", "group", "split")


@dataclass(frozen=True)
class DatasetGateConfig:
    max_seq_len: int
    min_response_chars: int
    eval_share_bounds: tuple[float, float]
    min_train_rows: int
    min_eval_rows: int
    max_label_drift: float
    previous_labels: dict[str, float] | None = None  # the last accepted version's label distribution
    previous_version: str | None = None

    @classmethod
    def from_settings(cls, cfg: DatasetSettings, previous_labels: dict[str, float] | None = None,
                      previous_version: str | None = None) -> DatasetGateConfig:
        low, high = cfg.eval_share_bounds
        return cls(cfg.max_seq_len, cfg.min_response_chars, (low, high), cfg.min_train_rows,
                   cfg.min_eval_rows, cfg.max_label_drift, previous_labels, previous_version)


@dataclass
class Outcome:
    name: str
    type: str
    severity: str
    success: bool
    observed: Any = None
    unexpected_count: int = 0
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # {"id": ..., column: value}

    def describe(self, samples: int = 3) -> str:
        if not self.unexpected:
            return f"{self.name} (observed {self.observed})"
        shown = "; ".join(f"id={u.get('id')}: {_short(v)}" for u in self.unexpected[:samples]
                          for k, v in u.items() if k != "id")
        return f"{self.name} ({self.unexpected_count} row(s), e.g. {shown})"


@dataclass
class GateReport:
    success: bool  # every critical expectation held
    outcomes: list[Outcome]
    gx_result: dict[str, Any]
    config: DatasetGateConfig

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity != "critical"]

    def reasons_by_id(self) -> dict[str, list[str]]:
        """Row id -> names of the failed expectations (critical or warning) that flagged it."""
        reasons: dict[str, list[str]] = {}
        for outcome in self.failed + self.warnings:
            for row in outcome.unexpected:
                reasons.setdefault(str(row.get("id")), []).append(outcome.name)
        return reasons

    def summary(self) -> list[dict[str, Any]]:
        return [{"name": o.name, "type": o.type, "severity": o.severity, "success": o.success,
                 "observed": o.observed, "unexpected_count": o.unexpected_count} for o in self.outcomes]

    def message(self) -> str:
        return "dataset gate failed: " + "; ".join(o.describe() for o in self.failed)


def card_number(text: str | None) -> str | None:
    """The first number in ``text`` shaped like a card of a known issuer that passes the Luhn check."""
    for match in _CARD.finditer(text or ""):
        digits = re.sub(r"\D", "", match.group())
        if _CARD_ISSUER.fullmatch(digits) and luhn_valid(digits):
            return match.group()
    return None


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def derive_columns(frame: Any, previous_labels: dict[str, float] | None) -> Any:
    """The gate's derived columns: per-row facts that need the whole table (or another version) to compute."""
    out = frame.copy()
    out["card_number"] = out["response"].map(card_number)
    out["is_eval"] = (out["split"] == "eval").astype(int)
    out["is_train"] = (out["split"] == "train").astype(int)
    out["is_abstain"] = (out["kind"] == "abstain").astype(int)
    out["group_splits"] = out.groupby("group", dropna=True)["split"].transform("nunique")
    if previous_labels is not None:
        labels = out["label"].fillna("")
        share, size = labels.map(labels.value_counts(normalize=True)), labels.map(labels.value_counts())
        # sum over rows of each label's excess share / its row count == total-variation distance
        out["label_drift"] = (share - labels.map(previous_labels).fillna(0.0)).clip(lower=0) / size
    return out


def expectations(cfg: DatasetGateConfig) -> list[Any]:
    import great_expectations as gx

    E = gx.expectations

    def named(name: str, kind: Any, severity: str = "critical", **kwargs: Any) -> Any:
        return kind(meta={"name": name}, severity=severity, **kwargs)

    suite = [named(f"required_{c}", E.ExpectColumnValuesToNotBeNull, column=c) for c in REQUIRED]
    low, high = cfg.eval_share_bounds
    suite += [
        named("unique_ids", E.ExpectColumnValuesToBeUnique, column="id"),
        named("unique_prompts", E.ExpectColumnValuesToBeUnique, column="prompt_key"),
        named("max_tokens", E.ExpectColumnValuesToBeBetween, column="n_tokens", min_value=1,
              max_value=cfg.max_seq_len),
        named("min_response_length", E.ExpectColumnValueLengthsToBeBetween, column="response",
              min_value=cfg.min_response_chars),
        named("pii_email", E.ExpectColumnValuesToNotMatchRegex, column="response", regex=EMAIL),
        named("pii_phone", E.ExpectColumnValuesToNotMatchRegex, column="response", regex=PHONE),
        named("pii_card_number", E.ExpectColumnValuesToBeNull, column="card_number"),
        named("eval_share", E.ExpectColumnMeanToBeBetween, column="is_eval", min_value=low, max_value=high),
        named("min_train_rows", E.ExpectColumnSumToBeBetween, column="is_train", min_value=cfg.min_train_rows),
        named("min_eval_rows", E.ExpectColumnSumToBeBetween, column="is_eval", min_value=cfg.min_eval_rows),
        named("no_group_overlap", E.ExpectColumnValuesToBeInSet, column="group_splits", value_set=[1]),
        named("abstain_share", E.ExpectColumnMeanToBeBetween, "warning", column="is_abstain", max_value=0.5),
    ]
    if cfg.previous_labels is not None:
        suite += [
            named("label_drift", E.ExpectColumnSumToBeBetween, column="label_drift", max_value=cfg.max_label_drift),
            named("new_labels", E.ExpectColumnDistinctValuesToBeInSet, "warning", column="label",
                  value_set=sorted(cfg.previous_labels)),
        ]
    return suite


@lru_cache(maxsize=1)
def _batch_definition() -> Any:
    """One ephemeral context per process (creating it is cheap; importing GX is not)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("ragtune").add_dataframe_asset("examples")
    return context, asset.add_batch_definition_whole_dataframe("all rows")


def validate(frame: Any, cfg: DatasetGateConfig) -> GateReport:
    """Run the suite over ``frame`` (see ``tasks.dataset.rows.gate_frame``); success = no critical failure."""
    import great_expectations as gx

    context, batch_definition = _batch_definition()
    name = f"dataset-gate-{uuid.uuid4().hex[:8]}"
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations(cfg)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition,
                                                                            suite=suite))
    try:
        result = definition.run(batch_parameters={"dataframe": derive_columns(frame, cfg.previous_labels)},
                                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"],
                                               "return_unexpected_index_query": False})
    finally:
        context.validation_definitions.delete(name)
        context.suites.delete(name)
    outcomes = [_outcome(r.to_json_dict()) for r in result.results]
    success = all(o.success for o in outcomes if o.severity == "critical")
    return GateReport(success, outcomes, result.to_json_dict(), cfg)


def _outcome(r: dict[str, Any]) -> Outcome:
    config, res = r["expectation_config"], r.get("result") or {}
    if r.get("exception_info", {}).get("raised_exception"):
        res = {"observed_value": r["exception_info"].get("exception_message")}
    return Outcome((config.get("meta") or {}).get("name", config["type"]), config["type"],
                   str(config.get("severity", "critical")), bool(r["success"]), res.get("observed_value"),
                   int(res.get("unexpected_count") or 0), list(res.get("unexpected_index_list") or []))


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
