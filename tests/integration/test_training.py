"""Training sets from what the flow recorded, MLflow registration, the promotion gate,
loading by alias (the declared handbook)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest, logged_training_set
from vigil.declared import load_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import TrainingSet, default_split, version_params
from vigil.lifecycle.evaluation import book_week_test_set
from vigil.lifecycle.promotion import Decision, evaluation_window, promote, rollback
from vigil.lifecycle.tracking import CHALLENGER, CHAMPION, REGISTERED_MODEL, configure
from vigil.lifecycle.training import TrainReport, train_and_register
from vigil.models.loading import load_native
from vigil.online.connection import connect
from vigil.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def ingested(settings: Settings, small_world: pd.DataFrame) -> Settings:
    settings = settings.model_copy(update={"feature_repo": HANDBOOK_REPO})
    ingest(settings, small_world)
    return settings


def register(settings: Settings, data: TrainingSet, kind: str, **params: object) -> TrainReport:
    """`vigil train --model KIND` on `data`."""
    chosen = {**version_params(data.service, kind), **params}
    return train_and_register(settings, data.frame, kind, params=chosen, split=default_split(data), show_progress=False)


def test_training_set_is_point_in_time_and_equals_serving(ingested: Settings, small_world: pd.DataFrame) -> None:
    data = logged_training_set(ingested)
    frame = data.frame
    assert data.service.name == "fraud_v1" and "tx_fraud_scenario" not in frame.columns
    assert frame["transaction_id"].is_unique and len(frame) == small_world["tx_fraud"].notna().sum()
    expected_labels = small_world.set_index("transaction_id").loc[frame["transaction_id"], "tx_fraud"].to_numpy()
    assert np.array_equal(frame["tx_fraud"].to_numpy(), expected_labels)
    # The matrix a model trains on equals what serving computes for the same payments
    # (checked on the newest ones, which the online store still covers entirely).
    declared = load_declared(HANDBOOK_REPO)
    newest = small_world[small_world["tx_datetime"] >= small_world["tx_datetime"].max() - pd.Timedelta(hours=6)]
    train_rows = frame.set_index("transaction_id").loc[newest["transaction_id"]]
    store = DeclaredOnlineStore(connect(ingested.redis_url), ingested.key_prefix, declared)
    served = store.features(newest[list(declared.events.fields)], "fraud_v1").set_index("transaction_id")
    for name in data.service.features:
        np.testing.assert_allclose(
            train_rows[name].to_numpy(np.float64), served[name].to_numpy(np.float64), atol=1e-9, err_msg=name
        )
    assert train_rows["tx_amount"].tolist() == newest["tx_amount"].tolist()


def tags(version: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_model_version(REGISTERED_MODEL, version).tags


def test_register_promote_and_roll_back(ingested: Settings) -> None:
    from mlflow.tracking import MlflowClient

    data = logged_training_set(ingested)
    first = register(ingested, data, "baseline")
    assert first.version == "1" and set(first.aliases) == {CHALLENGER, CHAMPION}
    assert first.metrics is not None and 0.5 < first.metrics.auc <= 1
    # Measured on the book's test customers whatever the training days (the gate's too).
    assert first.metrics.transactions == len(evaluation_window(data.frame))
    assert first.metrics.transactions == len(book_week_test_set(data.frame, first.split))
    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.data.tags["feature_service"] == "fraud_v1"
    assert {"test.auc", "test.ap", "test.cp_at_100"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"plots/roc_pr.png", "plots/importance.png"} <= artifacts

    second = register(ingested, data, "xgboost", n_estimators=80)
    assert second.version == "2" and second.aliases == [CHALLENGER]
    # MLflow's generic pyfunc (what `mlflow models serve` runs) takes the raw inputs and
    # gives Vigil's scores, derived ratios included; the native flavour stays a Booster.
    import mlflow.pyfunc
    import mlflow.xgboost

    sample = data.frame.head(50)
    native = load_native(f"models:/{REGISTERED_MODEL}/2")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/2")
    inputs = sample[list(native.inputs)]
    np.testing.assert_allclose(pyfunc.predict(inputs), native.predict_proba(sample), atol=1e-6)
    # ...and on the model's own input example, as `mlflow models predict` would run it.
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}/2")
    example = Model.load(local).load_input_example(local)
    assert pyfunc.predict(example).shape == (len(example),)
    assert type(mlflow.xgboost.load_model(f"models:/{REGISTERED_MODEL}/2")).__name__ == "Booster"
    every = logged_training_set(ingested, every_feature=True).frame  # each version reads its own inputs
    decision = promote(ingested, every)
    assert isinstance(decision, Decision) and decision.challenger == "2"
    recorded = tags("2")
    assert recorded["gate.decision"] == ("promoted" if decision.promoted else "rejected")
    assert recorded["gate.reason"] == decision.reason
    figures = json.loads(recorded["gate.figures"])
    assert set(figures) == {
        "challenger v2",
        "champion v1",
        "window",
        "challenger minus champion",
        "policy of challenger v2",
        "policy of champion v1",
        "challenger v2 decisions",
        "champion v1 decisions",
    }
    # Each version carries the decision policy chosen on its evaluation week.
    policy = json.loads(tags("2")["policy"])
    assert 0 <= policy["review_threshold"] <= 1 and policy["budget"] == 100
    assert figures["policy of challenger v2"]["review_threshold"] == policy["review_threshold"]
    difference = figures["challenger minus champion"]
    assert difference["ap"] == pytest.approx(figures["challenger v2"]["ap"] - figures["champion v1"]["ap"])
    assert difference["ap_low"] <= difference["ap"] <= difference["ap_high"]
    if not decision.promoted:
        decision = promote(ingested, every, force=True)
        assert decision.promoted and decision.reason.startswith("forced")
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version) == "2"
    back = rollback(ingested)
    assert back.promoted and back.champion == "1"
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version) == "1"
    assert tags("1")["gate.decision"] == "restored"

    # A fresh process loads the champion by alias, natively.
    code = (
        "from vigil.models.loading import load_native; from vigil.settings import Settings; "
        "from vigil.lifecycle.tracking import configure; import sys; "
        "configure(Settings(mlflow_tracking_uri=sys.argv[1])); "
        "m = load_native('models:/fraud-detector@champion'); print(type(m).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ingested.tracking_uri], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "BaselineModel"


def test_postgresql_tracking_store(ingested: Settings) -> None:
    """The same registry calls against MLflow on the machine's PostgreSQL (skipped without one),
    with a plain postgresql:// URI (SQLAlchemy's default driver, psycopg 3)."""
    import psycopg2

    try:
        admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=2)
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {error}")
    database = f"vigil_{uuid.uuid4().hex[:8]}"
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    try:
        remote = Settings(
            **{
                **ingested.model_dump(),
                "mlflow_tracking_uri": f"postgresql://postgres@127.0.0.1:5432/{database}",
            }
        )
        configure(remote)
        report = register(remote, logged_training_set(remote), "baseline")
        assert report.version == "1" and CHAMPION in report.aliases
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()


def test_serve_waits_for_a_champion_and_the_cli_says_when_it_refuses(ingested: Settings) -> None:
    """`vigil serve` starts before any version is promoted (503, ready: no), serves the first
    champion without a restart; promote and rollback exit 1 when they refuse, promote exits 0 when
    what it was asked is already so; mistakes are named."""
    import time

    import httpx

    from tests.integration.serving_helpers import running_server, server_env, vigil

    configure(ingested)  # a registry that exists, with nothing in it
    env = server_env(ingested)
    with running_server(env) as base:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "no_model"}
        body = {"transaction_id": 1, "customer_id": 2, "terminal_id": 3, "tx_amount": 4.5,
                "tx_datetime": "2018-04-20T10:00:00"}  # fmt: skip
        waiting = httpx.post(f"{base}/v1/score", json=body)
        assert waiting.status_code == 503 and "no model is promoted yet" in waiting.json()["detail"]
        nothing = vigil("promote", env=env)
        assert nothing.returncode == 1 and "no challenger version" in nothing.stderr + nothing.stdout
        no_rollback = vigil("promote", "--rollback", env=env)
        assert no_rollback.returncode == 1 and "no earlier champion" in no_rollback.stderr + no_rollback.stdout
        register(ingested, logged_training_set(ingested), "baseline")
        deadline = time.monotonic() + 30
        while httpx.post(f"{base}/v1/score", json=body).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        answer = httpx.post(f"{base}/v1/score", json=body)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
        assert httpx.get(f"{base}/readyz").status_code == 200
    same = vigil("promote", "--to", "champion", "--force", env=env)  # already so: nothing changed, no failure
    assert same.returncode == 0 and "UNCHANGED" in same.stdout and "nothing to promote" in same.stdout
    future = vigil("train", "--train-start", "2030-01-01", env=env)
    assert future.returncode == 2 and "no ingested events between 2030-01-01" in future.stderr, future.stderr
    assert "the event log holds 2018-" in future.stderr
    no_scheme = vigil("score", "--transactions", "x.parquet", "--url", "localhost:8501", env=env)
    assert (
        no_scheme.returncode == 2
        and "needs a scheme" in no_scheme.stderr
        and "http://localhost:8501" in no_scheme.stderr
    )
    handbook_only = vigil("evaluate", "--windows", "2019-01-01", "--bootstrap", "0", env=env)
    assert handbook_only.returncode == 2 and "`vigil evaluate` runs the hand-written baseline" in handbook_only.stderr
    assert "Traceback" not in handbook_only.stderr
