"""Gradient-boosted trees (XGBoost), CUDA when the device allows."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xgboost as xgb

from vigil.features import spec
from vigil.models.base import FraudModel, Progress, feature_set_of_width, requirements, take_inputs
from vigil.models.forest import Forest

# Ratios the trees cannot form from the raw inputs with few splits: this payment against
# the customer's own habit (their average amount over 1, 7 and 30 days) and their pace
# today against their 30-day daily pace. Computed inside the model from the 15 inputs,
# so training and serving cannot disagree; the booster carries a marker for loading.
DERIVED_INPUTS: tuple[str, ...] = (
    "amount_over_customer_avg_1day",
    "amount_over_customer_avg_7day",
    "amount_over_customer_avg_30day",
    "customer_tx_today_over_daily_pace",
)
DERIVED_MARKER = "ratios-v1"


_COLUMN = {name: j for j, name in enumerate(spec.MODEL_INPUTS)}


def derived_inputs(raw: np.ndarray) -> np.ndarray:
    """The DERIVED_INPUTS columns from raw (unscaled) model inputs in spec order."""
    amount = raw[:, _COLUMN["tx_amount"]]
    ratios = [amount / (raw[:, _COLUMN[spec.customer_avg_name(d)]] + 1.0) for d in spec.WINDOW_DAYS]
    pace = raw[:, _COLUMN[spec.customer_count_name(30)]] / 30.0
    ratios.append(raw[:, _COLUMN[spec.customer_count_name(1)]] / (pace + 0.1))
    return np.column_stack(ratios)


# The recent-week companion (recent_days > 0): the handbook's best XGBoost settings (fraud_v1
# inputs, the last 7 training days), blended into the long-history model's probability. It
# ranks the bulk of genuine payments better (June: AUC +0.010 at equal AP without the floor
# below, +0.003 with it, at 0.0003 less AP): an option, off by default.
RECENT_PARAMS: dict[str, Any] = {
    "max_depth": 3,
    "learning_rate": 0.3,
    "tree_method": "exact",
    "base_score": 0.5,
    "objective": "binary:logistic",
    "eval_metric": "aucpr",
    "nthread": 2,
    "seed": 0,
}
RECENT_ROUNDS = 50

# A terminal compromised since its newest label is invisible to every input but the label's
# age, and the trees give that faint signal little weight (June: those frauds ranked 0.43-0.50
# against genuine payments, below the label age alone at 0.52-0.59). So the score is floored at
# `hidden_compromise_rate` (a chance per day) times the days since the terminal's newest label:
# the span in which a compromise could have started unseen. It reorders only the bulk of low
# scores (June validation, default model: AUC 0.8974 vs 0.8822, AP 0.7583 vs 0.7574, CP@100
# unchanged; README). Needs fraud_v3's label age: a model without it records rate 0.
FLOOR_PARAM = "hidden_compromise_rate"


# Up to this many rows, the array forest beats XGBoost's fixed per-call cost (measured on
# a 300-tree default model: 1 row ~35 us vs ~300 us, 2 rows ~50 us; at 8 rows they are even).
FOREST_MAX_ROWS = 2


class _ProgressCallback(xgb.callback.TrainingCallback):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.progress(1)
        return False


class XGBoostModel(FraudModel):
    kind: ClassVar[str] = "xgboost"
    mlflow_flavor: ClassVar[str] = "xgboost"

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self.booster: xgb.Booster | None = None
        # Optional standardisation (the book's protocol); kept inside the booster's attributes
        # so that the native MLflow model carries it.
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        # The trees as arrays, for one or two rows (built by `setup`, i.e. when serving).
        self.forest: Forest | None = None
        # The recent-week companion (params recent_days / recent_weight), and its arrays.
        self.recent: xgb.Booster | None = None
        self.recent_forest: Forest | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # Chosen by `vigil evaluate --tune` on validation windows before July (see README).
        return {
            "n_estimators": 500,
            "max_depth": 5,
            "learning_rate": 0.03,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 1.0,
            "tree_method": "hist",
            "base_score": 0.5,
            "seed": 0,
            "standardise": False,
            "derived_inputs": True,
            "feature_service": "fraud_v3",
            "recent_days": 0,  # no recent-week companion (set 7 for one; weight below)
            "recent_weight": 0.2,
            FLOOR_PARAM: 0.0003,
        }

    @property
    def progress_units(self) -> int:
        return int(self.params["n_estimators"]) + (RECENT_ROUNDS if self.params.get("recent_days") else 0)

    def _train_params(self) -> dict[str, Any]:
        own = (
            "n_estimators",
            "standardise",
            "derived_inputs",
            "feature_service",
            "inputs",
            "recent_days",
            "recent_weight",
        )
        params = {k: v for k, v in self.params.items() if k not in (*own, FLOOR_PARAM)}
        params.update(objective="binary:logistic", eval_metric="aucpr", device=self.device, nthread=2)
        return params

    @property
    def input_names(self) -> list[str]:
        """The booster's columns: the model inputs, then the derived ones when used."""
        return [*self.inputs, *(DERIVED_INPUTS if self.params.get("derived_inputs") else ())]

    def _inputs(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self._booster_inputs(np.asarray(self.matrix(frame), np.float64))

    def _booster_inputs(self, raw: np.ndarray) -> np.ndarray:
        """The main booster's columns from the model's raw inputs."""
        scaled = raw if self.scale is None else (raw - self.scale[0]) / self.scale[1]
        if self.params.get("derived_inputs"):
            scaled = np.column_stack([scaled, derived_inputs(raw)])
        return scaled.astype(np.float32)

    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> XGBoostModel:
        rate = float(self.params.get(FLOOR_PARAM) or 0.0)
        if not 0 <= rate < 1:
            raise ValueError(f"{FLOOR_PARAM} is a chance per day: within [0, 1) (0: no floor)")
        self.params[FLOOR_PARAM] = rate if spec.LABEL_AGE in self.inputs else 0.0
        if self.params.get("standardise"):
            raw = np.asarray(self.matrix(frame), np.float64)
            std = raw.std(axis=0)
            self.scale = (raw.mean(axis=0), np.where(std == 0, 1.0, std))
        data = xgb.DMatrix(self._inputs(frame), label=np.asarray(labels), feature_names=self.input_names)
        callbacks = [_ProgressCallback(progress)] if progress else []
        self.booster = xgb.train(
            self._train_params(), data, num_boost_round=int(self.params["n_estimators"]), callbacks=callbacks
        )
        if self.scale is not None:
            self.booster.set_attr(vigil_scale=json.dumps([self.scale[0].tolist(), self.scale[1].tolist()]))
        if self.params.get("derived_inputs"):
            self.booster.set_attr(vigil_derived=DERIVED_MARKER)
        if self.params.get("inputs"):  # a declared service's: the model carries their names
            self.booster.set_attr(vigil_inputs=json.dumps(list(self.inputs)), vigil_service=self.service_name)
        if self.params[FLOOR_PARAM]:
            self.booster.set_attr(vigil_hidden_compromise_rate=str(self.params[FLOOR_PARAM]))
        if self.params.get("recent_days"):
            self._fit_recent(frame, np.asarray(labels), int(self.params["recent_days"]), callbacks)
        else:
            self.recent = None
        return self

    def _fit_recent(self, frame: pd.DataFrame, labels: np.ndarray, days: int, callbacks: list[Any]) -> None:
        """The companion on the frame's last `days` days; stored inside the main booster
        (an attribute), so the native MLflow model stays one file that loads whole."""
        assert self.booster is not None
        if not 0 <= float(self.params["recent_weight"]) <= 1 or days < 1:
            raise ValueError("recent_weight must be within [0, 1] and recent_days at least 1 (0: no companion)")
        if not isinstance(frame, pd.DataFrame) or "tx_datetime" not in frame:
            raise ValueError("recent_days needs the training frame's tx_datetime column (or set recent_days=0)")
        day = pd.to_datetime(frame["tx_datetime"]).dt.normalize()
        recent = (day >= day.max() - pd.Timedelta(days=days - 1)).to_numpy()
        data = xgb.DMatrix(take_inputs(frame[recent], spec.MODEL_INPUTS).astype(np.float32), label=labels[recent])
        # On the CPU whatever the device: it is small (a week, 50 shallow trees, ~1 s) and the
        # book's `exact` tree method has no CUDA implementation. It predicts on the device.
        self.recent = xgb.train(RECENT_PARAMS, data, num_boost_round=RECENT_ROUNDS, callbacks=callbacks)
        self.booster.set_attr(
            vigil_recent=bytes(self.recent.save_raw(raw_format="json")).decode(),
            vigil_recent_weight=str(float(self.params["recent_weight"])),
            vigil_recent_days=str(days),
        )

    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        raw = np.asarray(self.matrix(frame), np.float64)
        result = self._predict(self.booster, self.forest, self._booster_inputs(raw))
        if self.recent is not None:
            weight = float(self.params["recent_weight"])
            # The companion reads fraud_v1's 15 raw inputs: the first 15 raw columns.
            v1 = raw[:, : len(spec.MODEL_INPUTS)].astype(np.float32)
            result = (1 - weight) * result + weight * self._predict(self.recent, self.recent_forest, v1)
        floor = self._floor(raw)
        return result if floor is None else np.maximum(result, floor)

    def derived_values(self, frame: pd.DataFrame | np.ndarray) -> dict[str, np.ndarray] | None:
        """The derived inputs (ratios) of each row, by name (None: this model derives none)."""
        if not self.params.get("derived_inputs"):
            return None
        values = derived_inputs(np.asarray(self.matrix(frame), np.float64))
        return {name: values[:, j] for j, name in enumerate(DERIVED_INPUTS)}

    def score_floor(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray | None:
        """The hidden-compromise floor of each row's score (None: this model has none)."""
        return self._floor(np.asarray(self.matrix(frame), np.float64))

    def _floor(self, raw: np.ndarray) -> np.ndarray | None:
        rate = float(self.params.get(FLOOR_PARAM) or 0.0)
        if not rate:
            return None
        floor: np.ndarray = np.minimum(rate * raw[:, self.inputs.index(spec.LABEL_AGE)], 1.0)
        return floor

    @staticmethod
    def _predict(booster: xgb.Booster, forest: Forest | None, inputs: np.ndarray) -> np.ndarray:
        if forest is not None and inputs.shape[0] <= FOREST_MAX_ROWS:
            return forest.predict_proba(inputs)
        # In-place prediction: no DMatrix, no OpenMP fan-out for small batches.
        return np.asarray(booster.inplace_predict(inputs), dtype=np.float64)

    def setup(self, device: str = "cpu", threads: int = 1) -> None:
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        # One thread for single rows: OpenMP fan-out costs more than it saves (p99 stalls).
        self.booster.set_param({"device": device, "nthread": threads})
        if self.recent is not None:
            self.recent.set_param({"device": device, "nthread": threads})
        try:
            self.forest = Forest.from_booster(self.booster) if device == "cpu" else None
            self.recent_forest = Forest.from_booster(self.recent) if device == "cpu" and self.recent else None
        except ValueError:  # an objective or split kind the arrays do not cover: XGBoost answers
            self.forest = self.recent_forest = None
        super().setup(device, threads)

    def feature_importance(self) -> dict[str, float] | None:
        if self.booster is None:
            return None
        gain = self.booster.get_score(importance_type="gain")
        return {name: float(gain.get(name, 0.0)) for name in self.input_names}  # type: ignore[arg-type]

    def contributions(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Per-column SHAP contributions over `input_names` (last column: bias), cheap for trees:
        the long-history model's (neither the recent-week companion's part nor the floor is attributed)."""
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        data = xgb.DMatrix(self._inputs(frame), feature_names=self.input_names)
        return np.asarray(self.booster.predict(data, pred_contribs=True))

    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:
        from mlflow.models import Model

        from vigil.models import xgb_flavor

        # Native xgboost flavour; pyfunc through Vigil's loader (see xgb_flavor: why).
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=xgb_flavor,
            flavor_name="mlflow.xgboost",
            xgb_model=self.booster,
            input_example=input_example,
            signature=signature,
            model_format="ubj",
            # Given, not inferred: MLflow infers them by predicting through its stock xgboost
            # pyfunc, which lacks the derived inputs and prints a failing traceback.
            pip_requirements=requirements("mlflow", "xgboost", "numpy", "pandas"),
        )

    @classmethod
    def load_model(cls, uri: str) -> XGBoostModel:
        import mlflow.xgboost

        model = cls()
        model.booster = mlflow.xgboost.load_model(uri)
        derived = model.booster.attr("vigil_derived")
        if derived not in (None, DERIVED_MARKER):
            raise ValueError(f"{uri}: derived inputs {derived!r} unknown to this version of vigil")
        model.params["derived_inputs"] = derived is not None
        declared = model.booster.attr("vigil_inputs")
        if declared:
            model.params["inputs"] = json.loads(declared)
            model.params["feature_service"] = model.booster.attr("vigil_service")
        else:
            width = int(model.booster.num_features()) - (len(DERIVED_INPUTS) if derived else 0)
            model.params["feature_service"] = feature_set_of_width(width).service
        scale = model.booster.attr("vigil_scale")
        if scale:
            mean, std = json.loads(scale)
            model.scale = (np.asarray(mean), np.asarray(std))
        model.params[FLOOR_PARAM] = float(model.booster.attr("vigil_hidden_compromise_rate") or 0.0)
        recent = model.booster.attr("vigil_recent")
        model.params["recent_days"] = int(model.booster.attr("vigil_recent_days") or 0) if recent else 0
        if recent:
            model.recent = xgb.Booster()
            model.recent.load_model(bytearray(recent.encode()))
            model.params["recent_weight"] = float(model.booster.attr("vigil_recent_weight") or 0.0)
        return model
