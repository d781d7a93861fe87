"""The promotion gate as a pure function: promote only if no configured metric regresses beyond its
tolerance against production; every comparison is kept as a reason, for the log and the artifact."""

from __future__ import annotations

from tasks.release.manifest import GateDecision

_LOWER_IS_BETTER = ("loss", "perplexity", "latency", "_ms")


def lower_is_better(metric: str) -> bool:
    return any(part in metric for part in _LOWER_IS_BETTER)


def decide(candidate: dict[str, float], production: dict[str, float] | None, tolerances: dict[str, float],
           force: bool = False, production_release: str | None = None, baseline: str = "") -> GateDecision:
    """Promote only if no configured metric regresses beyond its tolerance; every reason is kept.

    ``production_release`` None: no release yet, ``production`` holds the ``baseline``'s metrics (the base
    model, no index) and the first release is compared with them like any other.
    """
    production = production or {}
    reasons = [_compare(name, tol, candidate, production) for name, tol in sorted(tolerances.items())]
    reasons = [r for r in reasons if r]
    ok = not any(r.startswith("REGRESSED") or r.startswith("MISSING") for r in reasons)
    if production_release is None:
        against = f"{baseline}, evaluated in this run" if baseline else "no evaluated baseline"
        reasons.insert(0, f"no production release yet: the first release is gated against {against}")
    if ok:
        reasons.append("no configured metric regressed beyond its tolerance")
    if force and not ok:
        reasons.append("FORCED: promoted despite the gate")
    return GateDecision(promote=ok or force, forced=force and not ok, reasons=reasons, candidate=candidate,
                        production=production, tolerances=tolerances, production_release=production_release,
                        baseline=f"release {production_release}" if production_release else baseline)


def _compare(name: str, tolerance: float, candidate: dict[str, float], production: dict[str, float]) -> str:
    if name not in production:
        return "" if name not in candidate else f"new metric {name} = {candidate[name]:.4f} (no production value)"
    if name not in candidate:
        return f"MISSING: candidate has no {name} (production {production[name]:.4f})"
    cand, prod = float(candidate[name]), float(production[name])
    regression = cand - prod if lower_is_better(name) else prod - cand
    verdict = "REGRESSED" if regression > tolerance + 1e-12 else "ok"
    return f"{verdict}: {name} {prod:.4f} -> {cand:.4f} ({cand - prod:+.4f}, tolerance {tolerance})"


def decision_markdown(decision: GateDecision) -> str:
    verdict = "PROMOTE (forced)" if decision.forced else ("PROMOTE" if decision.promote else "REFUSE")
    names = sorted(set(decision.candidate) | set(decision.production))
    rows = [f"| {n} | {_fmt(decision.production.get(n))} | {_fmt(decision.candidate.get(n))} | "
            f"{decision.tolerances.get(n, '')} |" for n in names]
    table = ["| metric | production | candidate | tolerance |", "|---|---|---|---|", *rows]
    production = decision.baseline or decision.production_release or "none"
    return "\n".join([f"## Release gate: {verdict}", f"production: {production}", "", *table, "",
                      *[f"- {r}" for r in decision.reasons]])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
