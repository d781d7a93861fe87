"""Training curves for the Prefect UI: the loss of a fine-tuning run as a PNG image artifact.

The PNG travels inside the artifact as a data URI, so the UI shows it with no object store to
reach and no link that expires.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE


def loss_points(metrics: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) series from a checkpoint's metrics.json: eval loss always, train loss when recorded."""
    series = {"eval loss": [(int(e["step"]), float(e["eval_loss"])) for e in metrics.get("evals", [])]}
    train = metrics.get("train_losses") or []
    if train:
        series["train loss"] = [(int(e["step"]), float(e["loss"])) for e in train]
    return {name: points for name, points in series.items() if points}


def loss_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, points in series.items():
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@task(name="publish-training-curves", cache_policy=NO_CACHE)
def publish_training_curves(model_dir: str) -> dict[str, Any]:
    """Loss plot and eval-loss table of a run as artifacts; a run without metrics publishes nothing."""
    path = Path(model_dir) / "metrics.json"
    if not path.is_file():
        return {"published": False, "reason": f"no {path}"}
    series = loss_points(json.loads(path.read_text()))
    if not series:
        return {"published": False, "reason": "no loss recorded"}
    png = loss_png(series, f"fine-tuning loss ({Path(model_dir).parent.name})")
    create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(),
                          key="training-curves", description="Fine-tuning loss per optimizer step")
    if "eval loss" in series:
        create_table_artifact([{"step": s, "eval_loss": round(v, 4)} for s, v in series["eval loss"]],
                              key="eval-loss", description="Eval loss at each evaluation")
    return {"published": True, "png_bytes": len(png), "series": {k: len(v) for k, v in series.items()}}
