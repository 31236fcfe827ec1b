"""One contract suite over every model kind: behaviour, not just shapes, and MLflow round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.features import spec
from vigil.features.backfill import compute_features
from vigil.lifecycle.tracking import configure
from vigil.models.base import FraudModel, resolve_device
from vigil.models.loading import FLAVOR_CLASSES, load_native
from vigil.models.registry import MODEL_KINDS
from vigil.settings import Settings

pytestmark = pytest.mark.integration

# xgboost with the optional recent-week companion, so that its round trip stays covered.
FAST = {"xgboost": {"n_estimators": 60, "recent_days": 7}, "mlp": {"epochs": 4}, "baseline": {}}


@pytest.fixture(scope="module")
def training_frame(small_world: pd.DataFrame) -> pd.DataFrame:
    features = compute_features(small_world)
    frame = small_world[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]]
    return frame.merge(features, on="transaction_id")


@pytest.fixture(scope="module", params=sorted(MODEL_KINDS))
def trained(request: pytest.FixtureRequest, training_frame: pd.DataFrame) -> FraudModel:
    model = MODEL_KINDS[request.param](FAST[request.param])
    return model.fit(training_frame, training_frame["tx_fraud"].to_numpy())


def test_scores_are_probabilities(trained: FraudModel, training_frame: pd.DataFrame) -> None:
    scores = trained.predict_proba(training_frame.head(500))
    assert scores.shape == (500,) and np.all((scores >= 0) & (scores <= 1))


def test_batch_order_does_not_change_scores(trained: FraudModel, training_frame: pd.DataFrame) -> None:
    rows = training_frame.sample(300, random_state=1)
    shuffled = rows.sample(frac=1.0, random_state=2)
    by_id = dict(zip(rows["transaction_id"], trained.predict_proba(rows), strict=True))
    again = dict(zip(shuffled["transaction_id"], trained.predict_proba(shuffled), strict=True))
    assert all(abs(by_id[k] - again[k]) < 1e-6 for k in by_id)
    single = [float(trained.predict_proba(rows.iloc[i : i + 1])[0]) for i in range(5)]
    np.testing.assert_allclose(single, trained.predict_proba(rows.iloc[:5]), atol=1e-6)


def test_fraud_pattern_scores_higher_than_its_genuine_twin(trained: FraudModel, training_frame: pd.DataFrame) -> None:
    genuine = training_frame[(training_frame["tx_fraud"] == 0)].iloc[[len(training_frame) // 2]].copy()
    fraud = genuine.copy()
    # An amount far above the customer's habit, on a terminal that keeps seeing fraud.
    fraud["tx_amount"] = genuine["customer_id_avg_amount_30day_window"] * 6 + 250
    for days in spec.WINDOW_DAYS:
        fraud[spec.terminal_risk_name(days)] = 0.8
    assert trained.predict_proba(fraud)[0] > trained.predict_proba(genuine)[0]


def test_a_tiny_batch_can_be_overfit(training_frame: pd.DataFrame) -> None:
    tiny = pd.concat(
        [
            training_frame[training_frame["tx_fraud"] == 1].head(16),
            training_frame[training_frame["tx_fraud"] == 0].head(16),
        ]
    )
    labels = tiny["tx_fraud"].to_numpy()
    params = {
        "xgboost": {
            "n_estimators": 50,
            "max_depth": 4,
            "learning_rate": 0.5,
            "subsample": 1.0,
            "colsample_bytree": 1.0,
            "min_child_weight": 0.0,
        },
        "mlp": {"epochs": 300, "batch_size": 32, "learning_rate": 1e-2, "dropout": 0.0},
        "baseline": {"C": 1e4, "max_iter": 5000},
    }
    for kind, cls in MODEL_KINDS.items():
        scores = cls(params[kind]).fit(tiny, labels).predict_proba(tiny)
        accuracy = float(np.mean((scores > 0.5) == labels))
        assert accuracy >= 0.9, (kind, accuracy)


def test_every_kind_loads_by_its_flavor() -> None:
    """The loader's flavor table (imports one framework at a time) names every kind's class."""
    assert {c.mlflow_flavor: f"{c.__module__}.{c.__name__}" for c in MODEL_KINDS.values()} == FLAVOR_CLASSES


def test_mlflow_round_trip_loads_natively_with_the_same_scores(
    trained: FraudModel, training_frame: pd.DataFrame, settings: Settings
) -> None:
    from mlflow.models import infer_signature

    import mlflow

    local = Settings(
        **{
            **settings.model_dump(),
            "mlflow_tracking_uri": f"sqlite:///{settings.data_dir}/m.db",
            "mlflow_artifacts_dir": settings.data_dir / "artifacts",
        }
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    experiment = configure(local)
    rows = training_frame.head(200)
    example = rows[list(trained.inputs)].head(3).astype(np.float32)
    with mlflow.start_run(experiment_id=experiment):
        info = trained.log_model("model", example, infer_signature(example, trained.predict_proba(example)))
    loaded = load_native(info.model_uri)
    assert type(loaded) is type(trained)
    loaded.setup(resolve_device("cpu"))
    np.testing.assert_allclose(loaded.predict_proba(rows), trained.predict_proba(rows), atol=1e-6)
    # MLflow's generic pyfunc (`mlflow models serve`): the named inputs in, probabilities out.
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    scores = np.asarray(pyfunc.predict(rows[list(trained.inputs)].astype(np.float32)))  # as its signature says
    np.testing.assert_allclose(scores, trained.predict_proba(rows), atol=1e-6)


def test_hidden_compromise_floor(training_frame: pd.DataFrame) -> None:
    from vigil.models.xgb import XGBoostModel

    rows = training_frame.head(400)
    labels = training_frame["tx_fraud"].to_numpy()
    floored = XGBoostModel({"n_estimators": 20, "hidden_compromise_rate": 0.01}).fit(training_frame, labels)
    bare = XGBoostModel({"n_estimators": 20, "hidden_compromise_rate": 0}).fit(training_frame, labels)
    floor = 0.01 * rows[spec.LABEL_AGE].to_numpy()
    scores, before = floored.predict_proba(rows), bare.predict_proba(rows)
    # The floor lifts low scores to the label age's share and leaves the rest alone.
    np.testing.assert_allclose(scores, np.maximum(before, floor), atol=1e-6)
    assert np.any(floor > before)
    # Without fraud_v3's label age there is nothing to floor on: the model records rate 0.
    v2 = XGBoostModel({"n_estimators": 5, "feature_service": "fraud_v2"}).fit(training_frame, labels)
    assert v2.params["hidden_compromise_rate"] == 0.0
    with pytest.raises(ValueError, match="hidden_compromise_rate"):
        XGBoostModel({"n_estimators": 5, "hidden_compromise_rate": -1}).fit(training_frame, labels)


def test_device_choice() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


def test_weekly_windows_compare_candidates(training_frame: pd.DataFrame) -> None:
    from vigil.lifecycle.selection import book_settings, choose, run_windows, xgboost_candidate

    ours = xgboost_candidate("ours", {"n_estimators": 30}, None)
    seen: list[tuple[str, int, set[str]]] = []
    results = run_windows(
        training_frame,
        ["2018-05-01", "2018-05-08"],
        [ours, *book_settings()],
        log=lambda _: None,
        on_window=lambda start, test, scores: seen.append((start, len(test), set(scores))),
    )
    assert len(results) == 6 and set(results["model"]) == {"ours", *(c.name for c in book_settings())}
    assert results[["auc", "ap", "cp_at_100"]].notna().all().all()
    assert choose(results) in set(results["model"])
    assert [(s, n) for s, n, _ in seen] == [
        ("2018-05-01", results["transactions"].iloc[0]),
        ("2018-05-08", results["transactions"].iloc[3]),
    ]
    assert all(names == set(results["model"]) for _, _, names in seen)


def test_paired_differences_bracket_the_observed_difference(training_frame: pd.DataFrame) -> None:
    from vigil.lifecycle.evaluation import evaluate, paired_differences

    test = training_frame[training_frame["tx_datetime"] >= "2018-05-01"]
    rng = np.random.default_rng(0)
    good = test["tx_fraud"].to_numpy() + rng.normal(0, 0.5, len(test))  # informative
    noise = rng.random(len(test))  # uninformative
    result = paired_differences(test, good, {"noise": noise, "itself": good}, rounds=40)
    expected = evaluate(test, good)
    for d, name in zip(result["noise"], ("auc", "ap", "cp_at_100"), strict=True):
        assert d.metric == name and d.low <= d.value <= d.high
    auc = result["noise"][0]
    assert auc.value == pytest.approx(expected.auc - evaluate(test, noise).auc) and auc.settled and auc.low > 0
    assert all(d.value == d.low == d.high == 0 and not d.settled for d in result["itself"])


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_a_parameter_of_the_wrong_kind_is_named(kind: str) -> None:
    defaults = MODEL_KINDS[kind].default_params()
    number = next(n for n, v in defaults.items() if isinstance(v, int | float) and not isinstance(v, bool))
    with pytest.raises(ValueError, match=f"parameter {number} must be a number, got '0.1'"):
        MODEL_KINDS[kind]({number: "0.1"})
    with pytest.raises(ValueError, match=f"parameter {number} must be a number"):
        MODEL_KINDS[kind]({number: True})
    MODEL_KINDS[kind]({number: defaults[number]})  # the default itself is fine


def test_a_flag_must_be_true_or_false() -> None:
    from vigil.models.xgb import XGBoostModel

    with pytest.raises(ValueError, match="parameter standardise must be true or false, got 'yes'"):
        XGBoostModel({"standardise": "yes"})


def test_the_test_week_holds_the_books_customers_whatever_the_training_days(training_frame: pd.DataFrame) -> None:
    from vigil.lifecycle.evaluation import Split, book_test_set, book_week_test_set

    book = Split.book("2018-05-08")
    long = book.with_train_start("2018-04-01")
    same = book_week_test_set(training_frame, long)
    pd.testing.assert_frame_equal(same, book_test_set(training_frame, book))
    # Known from a month of frauds instead of a week's, more customers would be left out.
    assert len(book_test_set(training_frame, long)) < len(same)
