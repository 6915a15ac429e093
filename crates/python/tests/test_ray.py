"""casetag.ray on a real local Ray cluster (not a mock)."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
import casetag.ray  # noqa: E402
from conftest import run_cli  # noqa: E402

SHARDS = 8
COPIES = 17  # 17 x 1,197 bundled test cases = 20,349 rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("fault") / "died"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CASETAG_TEST_ACTOR_DIES_ONCE": str(marker)}},
    )
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, data_dir):
    base = pacsv.read_csv(data_dir / "test.csv").select(["id", "text", "region"])
    parts = []
    for c in range(COPIES):
        ids = pa.array([f"{i}-{c}" for i in base.column("id").to_pylist()])
        parts.append(base.set_column(0, "id", ids))
    table = pa.concat_tables(parts)
    d = tmp_path_factory.mktemp("in")
    step = -(-table.num_rows // SHARDS)
    for s in range(SHARDS):
        pq.write_table(table.slice(s * step, step), d / f"part-{s:02}.parquet")
    return d, table.num_rows


def cli_tags(casetag_bin, baseline, in_dir, tmp):
    out = tmp / "cli"
    r = run_cli(casetag_bin, "tag", "--model", baseline, "--input", in_dir, "--output", out)
    assert r.returncode == 0, r.stderr
    t = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))])
    return {i: (a, b, c) for i, a, b, c in zip(*(t.column(n).to_pylist() for n in ("id", "l1", "l2", "l3")))}


def check(out: pa.Table, n_rows, expected):
    ids = out.column("id").to_pylist()
    assert out.num_rows == n_rows
    assert len(set(ids)) == n_rows, "an id appears more than once"
    got = {i: (a, b, c) for i, a, b, c in zip(ids, *(out.column(n).to_pylist() for n in ("l1", "l2", "l3")))}
    assert got == expected


def run_job(baseline, in_dir):
    # One block per shard, so both actors get work: Ray reads these small
    # files as one block, which would leave the second actor idle.
    ds = ray.data.read_parquet(str(in_dir)).repartition(SHARDS)
    # By default two actors on this 2-CPU cluster get half a CPU each, the
    # other CPU is left to the reads (all of it to actors would hang the job).
    assert casetag.ray.default_actor_cpus(2) == 0.5
    out = casetag.ray.tag_dataset(ds, baseline, batch_size=1024, concurrency=2)
    return pa.concat_tables(ray.get(out.to_arrow_refs()))


def test_ray_data_job_equals_the_cli(cluster, shards, baseline, casetag_bin, tmp_path):
    in_dir, n = shards
    out = run_job(baseline, in_dir)
    assert out.schema.names[:3] == ["id", "text", "region"]
    assert "l1" in out.schema.names and "error" in out.schema.names
    check(out, n, cli_tags(casetag_bin, baseline, in_dir, tmp_path))


def arm(marker):
    """The next actor to start a batch exits hard, once (see casetag.ray)."""
    marker.unlink(missing_ok=True)
    Path(str(marker) + ".arm").touch()


def test_an_actor_dying_mid_job_loses_no_row(cluster, shards, baseline, casetag_bin, tmp_path):
    in_dir, n = shards
    arm(cluster)
    out = run_job(baseline, in_dir)
    assert cluster.exists(), "no actor died: the fault was not injected"
    check(out, n, cli_tags(casetag_bin, baseline, in_dir, tmp_path))


def read_dir(d):
    return pa.concat_tables([pq.read_table(p) for p in sorted(d.glob("*.parquet"))])


def test_file_job_writes_the_clis_files(cluster, shards, baseline, casetag_bin, tmp_path):
    in_dir, n = shards
    done = casetag.ray.tag_files(in_dir, tmp_path / "ray", baseline, concurrency=2)
    assert [Path(d["input"]).name for d in done] == [f"part-{s:02}.parquet" for s in range(SHARDS)]
    assert sum(d["rows"] for d in done) == n and all(d["untagged_rows"] == 0 for d in done)
    expected = cli_tags(casetag_bin, baseline, in_dir, tmp_path)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    out = read_dir(tmp_path / "ray")
    assert out.schema.names == read_dir(tmp_path / "cli").schema.names
    check(out, n, expected)


def test_a_stream_file_job_writes_the_clis_files(cluster, stream_model, query_files, casetag_bin, tmp_path):
    r = run_cli(casetag_bin, "tag", "--model", stream_model, "--input", query_files, "--output", tmp_path / "cli",
                "--stream-novelty", "--stream-window", "40")
    assert r.returncode == 0, r.stderr
    done = casetag.ray.tag_files(query_files, tmp_path / "ray", stream_model, concurrency=2,
                                 stream_novelty=True, stream_window=40)
    assert len(done) == 3
    for p in sorted((tmp_path / "cli").iterdir()):
        assert (tmp_path / "ray" / p.name).read_bytes() == p.read_bytes(), p.name


def test_an_actor_dying_mid_file_job_loses_no_row(cluster, shards, baseline, casetag_bin, tmp_path):
    in_dir, n = shards
    arm(cluster)
    done = casetag.ray.tag_files(in_dir, tmp_path / "ray", baseline, concurrency=2)
    assert cluster.exists(), "no actor died: the fault was not injected"
    assert len(done) == SHARDS
    # Only finished outputs are in place: no partial file or job directory left.
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [f"part-{s:02}.parquet" for s in range(SHARDS)]
    check(read_dir(tmp_path / "ray"), n, cli_tags(casetag_bin, baseline, in_dir, tmp_path))


@pytest.mark.parametrize("job", [[], ["--rows"]], ids=["files", "rows"])
def test_script_reads_and_writes_a_directory_of_shards(cluster, shards, baseline, tmp_path, job):
    import subprocess, sys
    in_dir, n = shards
    out_dir = tmp_path / "out"
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run(
        [sys.executable, str(root / "scripts" / "ray_tag.py"), str(in_dir), str(out_dir), "--model", str(baseline),
         "--address", "auto", *job],
        capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    t = pa.concat_tables([pq.read_table(p) for p in sorted(out_dir.glob("*.parquet"))])
    assert t.num_rows == n and len(set(t.column("id").to_pylist())) == n


def test_a_file_job_checks_every_input_before_any_actor_starts(cluster, baseline, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("text\nparcel never arrived\n")
    (src / "b.csv").write_text("id,body\n1,refund\n")
    with pytest.raises(ValueError, match="b.csv"):
        casetag.ray.tag_files(src, tmp_path / "out", baseline, concurrency=2)
    assert not any((tmp_path / "out").iterdir())
