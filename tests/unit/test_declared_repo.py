"""A declared repo compiles, or each mistake is named: the object, the field and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.declared_cards import write_repo
from vigil.declared import RepoMistakes, load_declared
from vigil.settings import PROJECT_ROOT


def test_a_valid_repo_compiles(tmp_path: Path) -> None:
    declared = load_declared(write_repo(tmp_path / "repo"))
    assert declared.project == "cards"
    assert declared.entities == {"card": "card", "merchant": "merchant"}
    assert sorted((a.name, a.function, a.window_seconds, a.delay_seconds) for a in declared.aggregations) == [
        ("card_amount_1h", "sum", 3600, 0),
        ("card_merchants_1d", "count_distinct", 86400, 0),
        ("merchant_fraud_rate_7d", "mean", 7 * 86400, 2 * 86400),
    ]
    assert declared.default_service.features == (
        "card_amount_1h", "card_merchants_1d", "merchant_fraud_rate_7d", "amount_share",
    )  # fmt: skip
    assert declared.derived[0].inputs == ("card_amount_1h", "card_merchants_1d")


def test_a_file_rewritten_within_the_second_at_the_same_size_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytecode is matched to its source by size and whole-second modification time: a repo
    edited in a notebook and loaded again must be read from its source."""
    import os

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as a user's Python has it
    root = write_repo(tmp_path / "repo")
    features = root / "features.py"
    before = features.stat()
    assert {a.name: a.function for a in load_declared(root).aggregations}["card_amount_1h"] == "sum"
    features.write_text(features.read_text().replace('function="sum"', 'function="max"'))
    os.utime(features, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert features.stat().st_size == before.st_size
    assert {a.name: a.function for a in load_declared(root).aggregations}["card_amount_1h"] == "max"


PANDAS_VIEW = """
import pandas as pd

@on_demand_feature_view(sources=[spending], schema=[Field(name="doubled", dtype=Float64)], mode="pandas")
def doubled(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"doubled": df["card_amount_1h"] * 2})

"""

MISTAKES = {
    "unknown function": (
        "features.py",
        ('function="sum"', 'function="median"'),
        "stream feature view 'spending', aggregation 'card_amount_1h', function: 'median' is not one of",
    ),
    "column not in the schema": (
        "features.py",
        ('column="amount"', 'column="amount_eur"'),
        "aggregation 'card_amount_1h', column: 'amount_eur' is not a field of the events",
    ),
    "zero window": (
        "features.py",
        ("timedelta(hours=1)", "timedelta(0)"),
        "aggregation 'card_amount_1h', time_window: a whole, positive number of seconds is needed",
    ),
    "several entities": (
        "features.py",
        ("entities=[card]", "entities=[card, merchant]"),
        "stream feature view 'spending', entities: exactly one entity is needed, found 2",
    ),
    "malformed delay": (
        "features.py",
        ('"vigil.delay": "2d"', '"vigil.delay": "two days"'),
        "stream feature view 'risk', tag vigil.delay: 'two days' is not an integer followed by s, m, h or d",
    ),
    "two features with one name": (
        "features.py",
        ('name="card_merchants_1d")', 'name="card_amount_1h")'),
        "feature 'card_amount_1h': also declared by stream feature view 'spending'",
    ),
    "entity key not a field": (
        "features.py",
        ('join_keys=["merchant"]', 'join_keys=["shop"]'),
        "entity 'merchant', join_keys: 'shop' is not a field of the events",
    ),
    "event id not a field": (
        "sources.py",
        ('"vigil.event_id": "id"}', '"vigil.event_id": "event_id"}'),
        "push source 'events', tag vigil.event_id: 'event_id' is not a field of the events",
    ),
    "event id not an integer": (
        "sources.py",
        ('Field(name="id", dtype=Int64)', 'Field(name="id", dtype=String)'),
        "push source 'events', tag vigil.event_id: 'id' is a string field: an event id is an Int64",
    ),
    "time not a timestamp": (
        "sources.py",
        ('path="data/e", timestamp_field="at"', 'path="data/e", timestamp_field="amount"'),
        "push source 'events', batch_source.timestamp_field: 'amount' is not a UnixTimestamp field",
    ),
    "no events source": (
        "sources.py",
        ('tags={"vigil.role": "events"})', "tags={})"),
        "the repo, RequestSource tagged vigil.role=events: exactly one is needed, found none",
    ),
    "batch list not a name": (
        "sources.py",
        ('tags={"vigil.role": "events"})', 'tags={"vigil.role": "events", "vigil.batch": "the events"})'),
        "request source 'event', tag vigil.batch: 'the events' is not a name (letters, digits and underscores)",
    ),
    "bound not a number": (
        "sources.py",
        ('Field(name="amount", dtype=Float64)]', 'Field(name="amount", dtype=Float64, tags={"vigil.max": "lots"})]'),
        "request source 'event', field 'amount', tag vigil.max: 'lots' is not a number",
    ),
    "bounds the wrong way round": (
        "sources.py",
        (
            'Field(name="amount", dtype=Float64)]',
            'Field(name="amount", dtype=Float64, tags={"vigil.min": "5", "vigil.max": "1"})]',
        ),
        "request source 'event', field 'amount': vigil.min 5 is above vigil.max 1",
    ),
    "bound on a string": (
        "sources.py",
        ('Field(name="merchant", dtype=String)', 'Field(name="merchant", dtype=String, tags={"vigil.min": "0"})'),
        "request source 'event', field 'merchant': tags vigil.min and vigil.max bound a number or an integer",
    ),
    "unknown role": (
        "sources.py",
        ('"vigil.role": "labels"', '"vigil.role": "label"'),
        "data source 'labels', tag vigil.role: 'label' is not one of events, labels",
    ),
    "not python mode": (
        "features.py",
        ("model_v1 = FeatureService(", PANDAS_VIEW + "model_v1 = FeatureService("),
        "on-demand feature view 'doubled', mode: 'pandas': Vigil runs python mode",
    ),
    "default tag not a boolean": (
        "features.py",
        ('"vigil.default": "true"', '"vigil.default": "yes"'),
        "feature service 'model_v1', tag vigil.default: 'yes' is not true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_each_mistake_is_named(tmp_path: Path, case: str) -> None:
    file, change, message = MISTAKES[case]
    root = write_repo(tmp_path / "repo", {file: change})
    with pytest.raises(RepoMistakes) as caught:
        load_declared(root)
    assert message in str(caught.value), str(caught.value)


WINDOW_FUNCTIONS = """
import numpy as np
from vigil.declared import window_function

@window_function
def peak(values, times, ids, t, event_id):
    return values.max()  # no answer for an empty window
"""


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"window_functions.py": WINDOW_FUNCTIONS},
            "window function 'peak', code: fails on an empty window: ValueError",
        ),
        (
            {
                "window_functions.py": WINDOW_FUNCTIONS.replace(
                    "@window_function", "@lambda f: window_function(f, 'sum')"
                )
            },
            "window function 'sum', name: 'sum' is one of Feast's own functions",
        ),
        ({"a.py": WINDOW_FUNCTIONS, "b.py": WINDOW_FUNCTIONS}, "window function 'peak', name: defined twice"),
    ],
    ids=["fails on an empty window", "a built-in's name", "defined twice"],
)
def test_each_window_function_mistake_is_named(tmp_path: Path, files: dict[str, str], message: str) -> None:
    root = write_repo(tmp_path / "repo", {"features.py": ('function="sum"', 'function="peak"')})
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(RepoMistakes) as caught:
        load_declared(root)
    assert message in str(caught.value), str(caught.value)


def test_an_unknown_function_lists_the_repos_own(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", {"features.py": ('function="sum"', 'function="peek"')})
    (root / "window_functions.py").write_text(
        WINDOW_FUNCTIONS.replace("values.max()", "values.max() if len(values) else 0.0")
    )
    with pytest.raises(
        RepoMistakes, match=r"'peek' is not one of count, .*, count_distinct or the repo's window functions \(peak\)"
    ):
        load_declared(root)


def test_a_repo_that_does_not_import_is_refused_with_the_error(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", {"features.py": ("from sources import", "from sourcez import")})
    with pytest.raises(RepoMistakes, match="Python files: ModuleNotFoundError: No module named 'sourcez'"):
        load_declared(root)


def test_the_cli_refuses_a_broken_repo_with_exit_2_and_names_the_mistake(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", {"features.py": ('function="sum"', 'function="median"')})
    done = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "repo", "check", "--repo", str(root)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "function: 'median' is not one of count, sum, mean, min, max, count_distinct" in done.stderr
    assert "Traceback" not in done.stderr


def declared_cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "VIGIL_FEATURE_REPO": str(PROJECT_ROOT / "examples" / "payments"), **extra}
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env,
        timeout=120,
    )  # fmt: skip


def test_the_handbook_commands_refuse_a_declared_repo_at_once() -> None:
    """`vigil backfill` (or evaluate) on a declared repo says what to use instead, exit 2."""
    done = declared_cli("backfill")
    assert done.returncode == 2, done.stderr
    assert "declares its features (vigil.role tags): `vigil backfill` runs the hand-written baseline" in done.stderr
    assert "vigil repo compute" in done.stderr and "Traceback" not in done.stderr


def test_training_on_a_declared_repo_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in this process (`vigil.cli.main`, what the `vigil` script calls): each refusal is
    the same exit code and message, without three more starts of the command."""
    from vigil.cli import main

    monkeypatch.setenv("VIGIL_FEATURE_REPO", str(PROJECT_ROOT / "examples" / "payments"))

    def train(*args: str) -> tuple[int, str]:
        code = main(["train", *args])
        return code, capsys.readouterr().err

    with monkeypatch.context() as nothing_ingested:
        nothing_ingested.setenv("VIGIL_DATA_DIR", str(tmp_path))
        code, no_events = train()
    assert code == 2 and "nothing of this repo was ingested" in no_events, no_events
    assert "give --events PATH" in no_events
    events = tmp_path / "events.csv"
    events.write_text("payment_id,paid_at\n1,2026-01-01T00:00:00\n")
    code, unknown = train("--events", str(events), "--feature-service", "nope")
    assert code == 2 and "no feature service named 'nope'" in unknown, unknown
    code, columns = train("--events", str(events))
    assert code == 2 and "no label column 'is_fraud'" in columns, columns
    assert "Traceback" not in no_events + unknown + columns


def test_plainly_valid_requests_are_typed_as_the_batch_checks_type_them(tmp_path: Path) -> None:
    """A request's events of JSON's own types take the quick path (`plain_events`), which must
    give exactly the frame `check_records` gives; anything else takes the batch checks."""
    import numpy as np
    import pandas as pd

    from tests.declared_cards import card_events
    from vigil.declared.events import check_records, plain_events

    declared = load_declared(write_repo(tmp_path / "cards"))
    rows = card_events(50, seed=5).drop(columns="fraud")
    records = [
        {**r, "id": int(r["id"]), "amount": float(r["amount"]), "at": pd.Timestamp(r["at"]).isoformat()}
        for r in rows.to_dict("records")
    ]
    records[3]["amount"] = 12  # an integral amount is a number too
    records[4]["at"] = "2026-03-02T10:00:00+02:00"  # another offset
    records[5]["at"] = "2026-03-02 10:00:00.5Z"  # a space, a fraction, Z
    records[6]["at"] = "2026-03-02T10:00:00.123456789"  # nanoseconds: pandas' parser keeps them
    for batch in (records[:1], records):
        plain = plain_events(declared, batch)
        assert plain is not None
        frame = pd.DataFrame.from_records(batch, columns=list(declared.events.fields)).astype(object)
        checked = check_records(declared, frame, "test", None)
        assert not checked.dead
        pd.testing.assert_frame_equal(plain, checked.events)
    for change in ({"id": "7"}, {"id": True}, {"amount": float("nan")}, {"card": ""}, {"at": "yesterday"},
                   {"at": "2200-01-01T00:00:00"}, {"merchant": None}, {"amount": "12.5"}):  # fmt: skip
        assert plain_events(declared, [{**records[0], **change}]) is None, change
    assert plain_events(declared, [{k: v for k, v in records[0].items() if k != "card"}]) is None
    assert np.int64(records[0]["id"]) == plain_events(declared, records[:1])["id"].iloc[0]  # type: ignore[index]


def test_the_quick_time_parser_agrees_with_pandas_or_declines() -> None:
    """`iso_nanoseconds` reads only the plain ISO 8601 shape, to the nanosecond as pandas does;
    any other text is left to pandas (None)."""
    import pandas as pd

    from vigil.declared.events import iso_nanoseconds

    plain = ["2018-05-20T10:11:12", "2018-05-20 10:11:12.5", "2018-05-20T10:11:12.123456Z",
             "2018-05-20T10:11:12-05:30", "1970-01-01T00:00:00+00:00", "1969-12-31T23:59:59.999999Z"]  # fmt: skip
    for text in plain:
        assert iso_nanoseconds(text) == pd.to_datetime(text, utc=True, format="ISO8601").value, text
    others = ["2018-05-20", "2018-05-20T10:11", "2018-05-20T10:11:12.1234567", "2018-W20-1T10:11:12",
              "2018-05-20T10:11:12+0530", "２０１８-05-20T10:11:12", "3000-01-01T00:00:00",
              "2018-02-30T00:00:00"]  # fmt: skip
    for text in others:
        assert iso_nanoseconds(text) is None, text


def test_a_small_stream_batch_is_sorted_out_as_the_array_checks_sort_it(tmp_path: Path) -> None:
    """`check_batch` (a live stream's few events typed by `plain_events`) gives the events and
    tokens `check_records` gives; a batch holding a label, or a bad record, takes the array
    checks whole."""
    import pandas as pd

    from tests.declared_cards import card_events
    from vigil.declared.events import KIND, LABEL, check_batch, check_records, record_fields

    declared = load_declared(write_repo(tmp_path / "cards"))
    rows = card_events(20, seed=8)
    records = [
        {**r, "id": int(r["id"]), "amount": float(r["amount"]), "at": pd.Timestamp(r["at"]).isoformat(), "fraud": None}
        for r in rows.to_dict("records")
    ]
    fields = list(record_fields(declared))
    tokens = [f"t{i}" for i in range(len(records))]
    frame = pd.DataFrame([{k: r.get(k) for k in fields} for r in records], columns=fields, dtype=object)
    quick, full = check_batch(declared, frame, "s", tokens), check_records(declared, frame, "s", tokens)
    pd.testing.assert_frame_equal(quick.events, full.events)
    assert quick.tokens == full.tokens == tokens and not quick.dead and not quick.label_tokens
    with_label = frame.copy()
    with_label.loc[0, KIND] = LABEL
    with_label.loc[0, "fraud"] = 1
    mixed = check_batch(declared, with_label, "s", tokens)
    assert len(mixed.events) == len(records) - 1 and mixed.label_tokens == ["t0"]
    bad = frame.copy()
    bad.loc[3, "amount"] = "a lot"
    refused = check_batch(declared, bad, "s", tokens)
    assert [d.reason for d in refused.dead] == ["amount: not a finite number ('a lot')"]
    assert len(refused.events) == len(records) - 1


def test_bounds_and_json_types_are_checked_on_every_path(tmp_path: Path) -> None:
    """A field's bounds (tags vigil.min, vigil.max) refuse a value outside them on the quick
    path and in the batch checks alike, naming the field; a JSON body's values must be of
    JSON's own type for their kind (`json_problems`), where a stream's text is converted."""
    import pandas as pd

    from tests.declared_cards import card_events
    from vigil.declared.events import check_records, json_problems, plain_events

    bounded = 'Field(name="amount", dtype=Float64, tags={"vigil.min": "0", "vigil.max": "1e6"})]'
    declared = load_declared(
        write_repo(tmp_path / "cards", {"sources.py": ('Field(name="amount", dtype=Float64)]', bounded)})
    )
    assert declared.events.bounds == {"amount": (0.0, 1e6)}
    row = card_events(1, seed=2).drop(columns="fraud").iloc[0].to_dict()
    record = {**row, "id": int(row["id"]), "amount": 10.0, "at": pd.Timestamp(row["at"]).isoformat()}
    assert (
        plain_events(declared, [record]) is not None and plain_events(declared, [{**record, "amount": 1e6}]) is not None
    )
    for amount in (-0.5, 1e6 + 1, 3.5e38):
        assert plain_events(declared, [{**record, "amount": amount}]) is None
        frame = pd.DataFrame.from_records([{**record, "amount": amount}], columns=list(declared.events.fields))
        dead = check_records(declared, frame.astype(object), "test").dead
        assert len(dead) == 1 and dead[0].reason.startswith("amount: not a finite number between 0 and 1e+06"), dead
    fields = declared.events.fields
    assert json_problems([record], fields) == []
    changes = [({"id": "7"}, "id"), ({"amount": "12.5"}, "amount"), ({"amount": True}, "amount"),
               ({"at": "2026-03-02"}, "at"), ({"at": 1533724260}, "at"), ({"card": ""}, "card")]  # fmt: skip
    for change, field in changes:
        problems = json_problems([{**record, **change}], fields)
        assert [p["loc"] for p in problems] == [[0, field]], (change, problems)
    long = json_problems([{**record, "at": "z" * 10_000}], fields)[0]
    assert len(long["input"]) < 50
