"""Training and batch scoring on CUDA against the CPU, with the project's own model code.

    python -m benchmarks.gpu [--rows 1000000] [--train-rows 300000] [--epochs 3]

Needs only PyTorch, NumPy (and pandas, which the model code imports) and, for the XGBoost
part, the xgboost package. Synthetic inputs shaped like fraud_v1's 15 (amounts, counts,
rates) with a planted signal, so the models learn something; under five minutes on a GPU
machine. Prints every figure and writes bench-results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """15 inputs in fraud_v1's order and labels with a planted signal (about 1 % fraud)."""
    rng = np.random.default_rng(seed)
    x = np.empty((rows, 15), np.float32)
    x[:, 0] = rng.lognormal(3.5, 1.0, rows)  # tx_amount
    x[:, 1:3] = rng.integers(0, 2, (rows, 2))  # weekend, night
    for i, days in enumerate((1, 7, 30)):
        x[:, 3 + 2 * i] = rng.poisson(1.7 * days, rows) + 1  # customer counts
        x[:, 4 + 2 * i] = rng.lognormal(3.5, 0.5, rows)  # customer mean amounts
        x[:, 9 + 2 * i] = rng.poisson(1.0 * days, rows)  # terminal counts
        x[:, 10 + 2 * i] = rng.beta(0.2, 20, rows)  # terminal risks
    logit = -6.0 + 1.5 * (x[:, 0] > 220) + 3.0 * (x[:, 0] / x[:, 8] > 4) + 25.0 * x[:, 14]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y


def time_it(run: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def torch_figures(device: str, x: np.ndarray, y: np.ndarray, score: np.ndarray, epochs: int) -> dict[str, float]:
    import pandas as pd
    import torch

    from vigil.features import spec
    from vigil.models.mlp import MLPModel

    frame = pd.DataFrame(x, columns=list(spec.MODEL_INPUTS))
    model = MLPModel({"epochs": epochs, "batch_size": 4096}, device=device)
    train_seconds, _ = time_it(lambda: model.fit(frame, y))
    model.setup(device, threads=torch.get_num_threads())
    model.predict_proba(score[:10_000])  # warm-up (CUDA kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    score_seconds, scores = time_it(lambda: model.predict_proba(score))
    return {
        "train_seconds": train_seconds,
        "train_rows_per_second": len(x) * epochs / train_seconds,
        "score_seconds": score_seconds,
        "score_rows_per_second": len(score) / score_seconds,
        "mean_score": float(np.mean(scores)),
    }


def xgboost_figures(device: str, x: np.ndarray, y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    import xgboost as xgb

    params = {"max_depth": 5, "learning_rate": 0.1, "objective": "binary:logistic", "device": device,
              "tree_method": "hist"}  # fmt: skip
    data = xgb.DMatrix(x, label=y)
    train_seconds, booster = time_it(lambda: xgb.train(params, data, num_boost_round=200))
    booster.inplace_predict(score[:10_000])
    score_seconds, _ = time_it(lambda: booster.inplace_predict(score))
    per_second = len(score) / score_seconds
    return {"train_seconds": train_seconds, "score_seconds": score_seconds, "score_rows_per_second": per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score")
    parser.add_argument("--train-rows", type=int, default=300_000, help="rows to train on")
    parser.add_argument("--epochs", type=int, default=3, help="MLP epochs")
    args = parser.parse_args()
    import torch

    x, y = synthetic(args.train_rows)
    score, _ = synthetic(args.rows, seed=1)
    results: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch": torch.__version__}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        results[f"mlp_{device}"] = torch_figures(device, x, y, score, args.epochs)
        print(f"MLP on {device}: {json.dumps(results[f'mlp_{device}'])}", flush=True)
    try:
        import xgboost  # noqa: F401

        for device in devices:
            results[f"xgboost_{device}"] = xgboost_figures(device, x, y, score)
            print(f"XGBoost on {device}: {json.dumps(results[f'xgboost_{device}'])}", flush=True)
    except ImportError:
        print("xgboost not installed: its part skipped")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
