#!/usr/bin/env python3
"""The cost of the engine: the same Parquet shards tagged by `casetag tag`
(one process, every core) and by Ray Data through the casetag wheel (1 and 2
actors), in one run on one machine. Prints one JSON line per run and a table.

Two Ray Data jobs are timed: `casetag.ray.tag_files` (files in, files out:
each actor tags whole files, only their names pass through Ray) and
`casetag.ray.tag_dataset` (`read_parquet` -> actors -> `write_parquet`, every
row through Ray's object store). Timing starts once the local cluster is up
and idle, as on a running cluster.

    .venv/bin/python scripts/bench_ray.py --model out/quickstart/models/baseline --rows 1000000
    .venv/bin/python scripts/bench_ray.py --model out/quickstart/models/transformer --rows 3000
    .venv/bin/python scripts/bench_ray.py --model M --startup

With --startup it times instead what a job pays before its first case: the
CLI tagging one row, `import casetag` and `casetag.Model(M)` in a fresh
Python process, a local Ray cluster coming up, and a `tag_files` job of one
one-row file (the actor's start and its load of the bundle), the medians of
--repeats runs.

The cases are the bundled test split repeated (ids made unique) into
--shards Parquet files. Peak memory per actor is the largest resident set
of a Ray MapWorker process, sampled every 0.2 s.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def make_shards(d: Path, rows: int, shards: int) -> None:
    base = pacsv.read_csv(ROOT / "data/aftersales/test.csv").select(["id", "text", "region", "channel"])
    parts, n, c = [], 0, 0
    while n < rows:
        t = base.slice(0, min(base.num_rows, rows - n))
        parts.append(t.set_column(0, "id", pa.array([f"{i}-{c}" for i in t.column("id").to_pylist()])))
        n += t.num_rows
        c += 1
    table = pa.concat_tables(parts)
    step = -(-rows // shards)
    for s in range(shards):
        pq.write_table(table.slice(s * step, step), d / f"part-{s:03}.parquet")


class RssWatch:
    """Largest resident set of any Ray MapWorker process while running."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p in Path("/proc").iterdir():
                if not p.name.isdigit():
                    continue
                try:
                    if b"MapWorker" not in (p / "cmdline").read_bytes():
                        continue
                    for line in (p / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                except OSError:
                    pass
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def startup(a) -> None:
    """Medians of --repeats runs of each fixed cost, one JSON line each."""
    import statistics
    import sys

    work = Path(tempfile.mkdtemp(prefix="casetag-bench-start-"))
    try:
        (work / "in").mkdir()
        (work / "in" / "one.csv").write_text("text\nwhere is my parcel, it is two weeks late\n")

        def timed(f):
            runs = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                f()
                runs.append(time.perf_counter() - t0)
            return round(statistics.median(runs), 3)

        def cli():
            subprocess.run([a.bin, "tag", "--model", a.model, "--input", str(work / "in" / "one.csv"),
                            "--output", str(work / "cli.csv")], check=True, capture_output=True)

        def py(code):
            return lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

        out = {"model": a.model,
               "cli_one_row_s": timed(cli),
               "python_import_s": timed(py("import casetag")),
               "python_import_and_load_s": timed(py(f"import casetag; casetag.Model({a.model!r})"))}
        import ray
        import casetag.ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.get(ray.remote(lambda: 0).remote())
        out["ray_init_s"] = round(time.perf_counter() - t0, 3)
        k = iter(range(a.repeats))
        out["ray_tag_files_one_row_s"] = timed(
            lambda: casetag.ray.tag_files(work / "in", work / f"ray-{next(k)}", a.model, concurrency=1))
        ray.shutdown()
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--bin", default=str(ROOT / "target/release/casetag"))
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--full-actor", action="store_true",
                    help="also run 1 actor holding every core (the cluster then gets one extra "
                         "logical CPU so Ray's reads and writes can be scheduled beside it)")
    ap.add_argument("--startup", action="store_true", help="time the fixed costs before the first case instead")
    ap.add_argument("--repeats", type=int, default=5, help="with --startup: runs of each, the median reported")
    a = ap.parse_args()
    if a.startup:
        startup(a)
        return 0

    import ray
    import casetag.ray

    work = Path(tempfile.mkdtemp(prefix="casetag-bench-ray-"))
    try:
        src = work / "in"
        src.mkdir()
        make_shards(src, a.rows, a.shards)
        results = []

        t0 = time.perf_counter()
        r = subprocess.run([a.bin, "tag", "--model", a.model, "--input", str(src), "--output", str(work / "cli")],
                           capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        results.append({"engine": "casetag tag (CLI)", "workers": 1, "rows": a.rows, "seconds": secs})

        cpus_total = os.cpu_count()
        extra = 1 if a.full_actor else 0
        ray.init(num_cpus=cpus_total + extra, include_dashboard=False, log_to_driver=False)
        # Let the workers Ray starts with finish booting before timing.
        ray.get([ray.remote(lambda: 0).remote() for _ in range(cpus_total)])
        time.sleep(3)
        # Files: the actors hold every CPU (nothing else in the job needs one).
        runs = [("files", n, cpus_total / n) for n in (1, 2)]
        # Rows: as on a cluster of cpus_total CPUs, one left to reads and writes.
        runs += [("rows", n, max(0.25, (cpus_total - 1.0) / n)) for n in (1, 2)]
        if a.full_actor:
            runs.append(("rows", 1, float(cpus_total)))
        for job, actors, cpus in runs:
            out = work / f"ray-{job}-{actors}-{cpus}"
            with RssWatch() as w:
                t0 = time.perf_counter()
                if job == "files":
                    casetag.ray.tag_files(src, out, a.model, concurrency=actors, num_cpus=cpus)
                else:
                    ds = ray.data.read_parquet(str(src))
                    casetag.ray.tag_dataset(ds, a.model, batch_size=a.batch_size, concurrency=actors,
                                            num_cpus=cpus).write_parquet(str(out))
                secs = time.perf_counter() - t0
            n = ray.data.read_parquet(str(out)).count()
            assert n == a.rows, (n, a.rows)
            engine = "Ray Data tag_files" if job == "files" else "Ray Data tag_dataset"
            results.append({"engine": engine, "workers": actors, "rows": n, "seconds": secs,
                            "actor_cpus": cpus, "peak_rss_per_actor_mib": round(w.peak / 2**20)})
        ray.shutdown()

        cli = results[0]["rows"] / results[0]["seconds"]
        print(f"model {a.model}, {a.rows} rows in {a.shards} shards, {os.cpu_count()} CPUs")
        print("| engine | actors | cases/s | vs CLI | peak RSS per actor |")
        print("|---|---|---|---|---|")
        for res in results:
            rate = res["rows"] / res["seconds"]
            res["cases_per_s"] = round(rate, 1)
            res["vs_cli"] = round(rate / cli, 3)
            who = f"{res['workers']} x {res['actor_cpus']:g} CPU" if 'actor_cpus' in res else '-'
            print(f"| {res['engine']} | {who} | {rate:,.0f} | "
                  f"{rate / cli:.2f} | {res.get('peak_rss_per_actor_mib', '-')} MiB |")
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
