#!/usr/bin/env python3
"""Tag a directory of Parquet shards with Ray Data and write a directory of
Parquet shards: input columns kept, the columns `casetag tag` writes added.

    python scripts/ray_tag.py IN_DIR OUT_DIR --model MODEL [--concurrency 2] [--rows]

By default each actor tags whole files (`casetag.ray.tag_files`: OUT_DIR gets
the file names `casetag tag` gives, and the cases never pass through Ray's
object store; IN_DIR may hold CSV, Parquet or JSONL). With --rows the
shards are read into a Ray Dataset and written back by Ray
(`casetag.ray.tag_dataset`: Parquet in, Ray's file names out).

Needs the casetag wheel and Ray (`bash scripts/python_env.sh` installs both
into .venv). Connects to the cluster at --address (or RAY_ADDRESS); without
one, starts a local cluster on this machine.
"""

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="directory (or glob) of Parquet files with a text column")
    ap.add_argument("output", help="output directory (created; Parquet files)")
    ap.add_argument("--model", required=True, help="bundle directory, readable from every node")
    ap.add_argument("--fallback", help="baseline bundle answering when the model fails")
    ap.add_argument("--concurrency", type=int, default=2, help="actors (each loads the bundle once)")
    ap.add_argument("--rows", action="store_true",
                    help="tag a Ray Dataset read from the shards (rows through Ray's object store) "
                         "instead of whole files")
    ap.add_argument("--batch-size", type=int, default=4096, help="with --rows: rows per batch handed to an actor")
    ap.add_argument("--actor-cpus", type=float, default=None,
                    help="CPUs per actor (default: the cluster's CPUs shared by the actors; with --rows, "
                         "less one left to Ray's reads and writes)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster (default: all)")
    ap.add_argument("--stream-novelty", action="store_true",
                    help="judge out of scope for each row against the rows before it in its file "
                         "(as casetag tag --stream-novelty; not with --rows)")
    ap.add_argument("--stream-window", type=int, default=2000, help="with --stream-novelty: rows judged against")
    a = ap.parse_args()
    if a.stream_novelty and a.rows:
        print("error: --stream-novelty follows each file's row order; --rows has none", file=sys.stderr)
        return 2

    import ray
    import casetag.ray

    try:
        casetag.Model(a.model, fallback=a.fallback, stream_novelty=a.stream_novelty, stream_window=a.stream_window)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ray.init(address=a.address, num_cpus=a.num_cpus if a.address is None else None,
             include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    if a.rows:
        ds = ray.data.read_parquet(a.input)
        out = casetag.ray.tag_dataset(ds, a.model, fallback=a.fallback, batch_size=a.batch_size,
                                      concurrency=a.concurrency, text_column=a.text_column,
                                      num_cpus=a.actor_cpus)
        out.write_parquet(a.output)
        secs = time.perf_counter() - t0
        rows = ray.data.read_parquet(a.output).count()
    else:
        try:
            done = casetag.ray.tag_files(a.input, a.output, a.model, fallback=a.fallback,
                                         concurrency=a.concurrency, text_column=a.text_column,
                                         num_cpus=a.actor_cpus, stream_novelty=a.stream_novelty,
                                         stream_window=a.stream_window)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        secs = time.perf_counter() - t0
        rows = sum(d["rows"] for d in done)
    print(json.dumps({"rows": rows, "seconds": round(secs, 3), "cases_per_s": round(rows / secs, 1),
                      "output": a.output, "actors": a.concurrency}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
