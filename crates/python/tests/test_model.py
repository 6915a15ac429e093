"""The wheel against the CLI: same columns, types and values; errors as the CLI words them."""

import pickle
import threading
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import casetag
from conftest import run_cli


def cli_tag(casetag_bin, model, src, out, *extra):
    r = run_cli(casetag_bin, "tag", "--model", model, "--input", src, "--output", out, *extra)
    assert r.returncode == 0, r.stderr
    return pq.read_table(out)


def test_outputs_equal_the_clis_on_the_bundled_test_split(casetag_bin, baseline, data_dir, tmp_path):
    cli = cli_tag(casetag_bin, baseline, data_dir / "test.csv", tmp_path / "cli.parquet")
    batch = pacsv.read_csv(data_dir / "test.csv")
    ours = casetag.Model(baseline).tag_arrow(batch)
    assert ours.schema.names == cli.schema.names
    n_in = batch.num_columns
    # Input columns are the caller's own, untouched (zero-copy); the output
    # columns have exactly the CLI's types.
    assert ours.schema.names[:n_in] == batch.schema.names
    for i in range(n_in, ours.num_columns):
        assert ours.schema.field(i).type == cli.schema.field(i).type, ours.schema.names[i]
    assert ours.num_rows == cli.num_rows == 1197
    for name in ours.schema.names[n_in:]:
        assert ours.column(name).to_pylist() == cli.column(name).to_pylist(), name
    # Input columns: the same values, up to the CSV readers (pyarrow reads
    # an empty field as "", polars as null).
    for name in ours.schema.names[:n_in]:
        mine = [v if v != "" else None for v in ours.column(name).to_pylist()]
        assert mine == cli.column(name).to_pylist(), name


def test_top_k_and_list_actions_equal_the_clis(casetag_bin, baseline, data_dir, tmp_path):
    batch = pacsv.read_csv(data_dir / "test.csv").slice(0, 200)
    src = tmp_path / "in.parquet"
    pq.write_table(batch, src)
    cli = cli_tag(casetag_bin, baseline, src, tmp_path / "cli.parquet", "--top-k", "3")
    ours = casetag.Model(baseline).tag_arrow(batch, top_k=3)
    assert ours.schema.names == cli.schema.names
    assert ours.schema.names[-3:] == ["top_l1", "top_l2", "top_l3"]
    for name in ["actions", "top_l1", "top_l2", "top_l3"]:
        assert ours.schema.field(name).type == cli.schema.field(name).type, name
        assert ours.column(name).to_pylist() == cli.column(name).to_pylist(), name
    row = ours.slice(0, 1).to_pylist()[0]
    assert [a["node"] for a in row["top_l1"]][0] == row["guess_l1"]
    assert all(set(a) == {"id", "mode"} for a in row["actions"])
    one = casetag.Model(baseline).tag(["my parcel never arrived"], top_k=2)[0]
    assert len(one["top_l2"]) == 2
    with pytest.raises(ValueError, match="top_k"):
        casetag.Model(baseline).tag_arrow(batch, top_k=51)


def test_input_columns_are_not_copied(baseline):
    text = pa.array(["parcel never arrived", "refund please"])
    rb = pa.record_batch({"text": text, "n": pa.array([1, 2])})
    out = casetag.Model(baseline).tag_arrow(rb)
    assert out.column("text").buffers()[1].address == text.buffers()[1].address
    assert out.column("n").type == pa.int64()


def test_bad_rows_get_the_clis_error_and_the_batch_goes_on(casetag_bin, baseline, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,text\na,where is my refund\nb,""\nc,   \nd,parcel lost\n')
    cli = cli_tag(casetag_bin, baseline, src, tmp_path / "cli.parquet")
    out = casetag.Model(baseline).tag_arrow(pacsv.read_csv(src))
    assert out.column("error").to_pylist() == cli.column("error").to_pylist()
    assert out.column("error").to_pylist() == [None, "empty or missing text", "empty or missing text", None]
    assert out.column("l1").to_pylist()[0] is not None


def test_tag_takes_a_list_of_texts(baseline):
    rows = casetag.Model(baseline).tag(["where is my refund", None])
    assert [r["error"] for r in rows] == [None, "empty or missing text"]
    assert list(rows[0]) == list(casetag.OUTPUT_COLUMNS)
    assert rows[0]["served_by"] == "baseline"


def test_tables_chunks_and_capsule_objects(baseline):
    m = casetag.Model(baseline)
    t = pa.table({"text": ["a refund", "a lost parcel", "a damaged item"]})
    t = pa.concat_tables([t, t])  # two chunks
    out = m.tag_arrow(t)
    assert out.num_rows == 6

    class Capsule:  # any producer of the Arrow PyCapsule interface
        def __init__(self, rb):
            self.rb = rb

        def __arrow_c_array__(self, requested_schema=None):
            return self.rb.__arrow_c_array__(requested_schema)

    rb = pa.record_batch({"body": ["a refund"], "id": [7]})
    out2 = m.tag_arrow(Capsule(rb), text_column="body", id_column="id")
    assert out2.column("l1").to_pylist() == out.column("l1").to_pylist()[:1]


def test_a_bad_bundle_raises_the_clis_message(casetag_bin, tmp_path, data_dir):
    missing = tmp_path / "nope"
    r = run_cli(casetag_bin, "tag", "--model", missing, "--input", data_dir / "test.csv", "--output", tmp_path / "o.csv")
    assert r.returncode != 0
    cli_msg = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    with pytest.raises(ValueError) as e:
        casetag.Model(missing)
    assert str(e.value) == cli_msg


def test_a_missing_column_raises_value_error(baseline):
    m = casetag.Model(baseline)
    with pytest.raises(ValueError, match=r"column 'text': missing \(found: body\)"):
        m.tag_arrow(pa.record_batch({"body": ["x"]}))
    with pytest.raises(ValueError, match="column 'case_id': missing"):
        m.tag_arrow(pa.record_batch({"text": ["x"]}), id_column="case_id")
    with pytest.raises(TypeError):
        m.tag_arrow([1, 2, 3])


def test_a_turn_level_batch_is_refused(baseline):
    m = casetag.Model(baseline)
    turns = pa.record_batch(
        {"case_id": ["a", "a"], "turn": [1, 2], "speaker": ["buyer", "agent"], "text": ["late", "sorry"]}
    )
    with pytest.raises(ValueError, match="turn-level batch .*`casetag tag`"):
        m.tag_arrow(turns)
    # Naming another text column tags the rows as they are.
    out = m.tag_arrow(turns.append_column("body", pa.array(["late", "sorry"])), text_column="body")
    assert out.num_rows == 2


def test_info_and_taxonomy(baseline):
    m = casetag.Model(baseline)
    info = m.info()
    assert info["kind"] == "baseline" and info["id"].startswith("baseline-")
    assert info["primary_loaded"] is True
    tax = m.taxonomy()
    assert tax["depth"] == 3 and tax["nodes"]
    assert pickle.loads(pickle.dumps(m)).info()["id"] == info["id"]


def test_the_gil_is_released_while_tagging(baseline, data_dir):
    m = casetag.Model(baseline)
    t = pacsv.read_csv(data_dir / "test.csv")
    big = pa.concat_tables([t] * 20).combine_chunks()  # ~24k rows
    done = threading.Event()
    ticks = []

    def tag():
        t0 = time.perf_counter()
        m.tag_arrow(big)
        ticks.append(time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=tag)
    n = 0
    th.start()
    while not done.is_set():
        n += 1
        time.sleep(0)
    th.join()
    # The main thread kept running Python code during the native call:
    # thousands of loop turns, where a held GIL would allow a handful.
    assert ticks[0] > 0.05, f"tagging took {ticks[0]:.3f} s, too short to tell"
    assert n > 200, f"only {n} loop turns while tagging ran {ticks[0]:.2f} s"


def test_tag_file_writes_the_clis_file(casetag_bin, baseline, data_dir, tmp_path):
    src = data_dir / "test.csv"
    cli = cli_tag(casetag_bin, baseline, src, tmp_path / "cli.parquet")
    done = casetag.Model(baseline).tag_file(src, tmp_path / "ours.parquet")
    assert done["rows"] == done["tagged_rows"] == 1197 and done["output"] == str(tmp_path / "ours.parquet")
    assert pq.read_table(tmp_path / "ours.parquet").equals(cli)
    # Turn-level tables are joined, as the CLI joins them.
    turns = tmp_path / "turns.csv"
    turns.write_text("case_id,turn,speaker,text\nc1,1,buyer,where is my parcel\nc1,2,agent,checking\nc2,1,buyer,refund\n")
    assert casetag.Model(baseline).tag_file(turns, tmp_path / "turns.jsonl")["rows"] == 2


def test_stream_novelty_tags_files_as_the_cli(casetag_bin, baseline, stream_model, query_files, tmp_path):
    src = query_files / "q0.csv"
    r = run_cli(casetag_bin, "tag", "--model", stream_model, "--input", src, "--output", tmp_path / "cli.jsonl",
                "--stream-novelty", "--stream-window", "40")
    assert r.returncode == 0, r.stderr
    m = casetag.Model(stream_model, stream_novelty=True, stream_window=40)
    done = m.tag_file(src, tmp_path / "ours.jsonl")
    assert done["stream_novelty"] is True and done["rows"] == 150
    assert (tmp_path / "ours.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    # Each file its own stream: the same file again gives the same bytes.
    m.tag_file(src, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    # Judged case by case, the scores differ.
    casetag.Model(stream_model).tag_file(src, tmp_path / "per_case.jsonl")
    assert (tmp_path / "per_case.jsonl").read_bytes() != (tmp_path / "cli.jsonl").read_bytes()
    # Shipped to a worker, it still judges against the stream.
    clone = pickle.loads(pickle.dumps(m))
    assert (clone.stream_novelty, clone.stream_window) == (True, 40)
    # Batches have no order to follow; one way of judging at a time.
    with pytest.raises(ValueError, match="tag_file"):
        m.tag(["where is my parcel"])
    with pytest.raises(ValueError, match="one way"):
        casetag.Model(stream_model, batch_novelty=True, stream_novelty=True)
    # A model without the detector's batch rule cannot, in the CLI's words.
    with pytest.raises(ValueError, match="--stream-novelty"):
        casetag.Model(baseline, stream_novelty=True)


def test_tag_file_errors_are_the_clis(casetag_bin, baseline, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,where is my parcel\n")
    r = run_cli(casetag_bin, "tag", "--model", baseline, "--input", src, "--output", tmp_path / "cli.csv")
    assert r.returncode == 2
    with pytest.raises(ValueError) as e:
        casetag.Model(baseline).tag_file(src, tmp_path / "ours.csv")
    assert str(e.value) in r.stderr
    assert not (tmp_path / "ours.csv").exists()
    assert casetag.Model(baseline).tag_file(src, tmp_path / "ours.csv", text_column="body")["rows"] == 1


def test_plan_files_names_outputs_as_the_cli(tmp_path):
    for n in ["b.csv", "a.parquet", "notes.txt"]:
        (tmp_path / n).write_text("text\nx\n")
    out = tmp_path / "out"
    assert casetag.plan_files(tmp_path, out) == [
        (str(tmp_path / "a.parquet"), str(out / "a.parquet")),
        (str(tmp_path / "b.csv"), str(out / "b.csv")),
    ]
    assert out.is_dir()
    assert casetag.plan_files(tmp_path / "*.csv", out, "jsonl") == [(str(tmp_path / "b.csv"), str(out / "b.jsonl"))]
    with pytest.raises(ValueError, match="no .csv"):
        casetag.plan_files(tmp_path / "*.pq", out)


def test_set_threads_reports_the_pool(baseline):
    casetag.Model(baseline).tag(["parcel never arrived"])
    # The pool is running now: asking for another size changes nothing.
    n = casetag.set_threads(1)
    assert n >= 1 and casetag.set_threads(n + 1) == n


def test_plan_files_checks_every_input_when_asked(tmp_path):
    (tmp_path / "a.csv").write_text("text\nparcel never arrived\n")
    (tmp_path / "b.csv").write_text("id,body\n1,refund\n")
    assert len(casetag.plan_files(tmp_path, tmp_path / "out")) == 2
    with pytest.raises(ValueError, match="b.csv"):
        casetag.plan_files(tmp_path, tmp_path / "out", text_column="text")
