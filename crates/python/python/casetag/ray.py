"""Batch inference on Ray Data: each actor loads the bundle once.

Two ways in, both ``map_batches`` with a callable class (Ray's documented
pattern for batch inference with a model that is expensive to load):

    import ray, casetag.ray
    # A Dataset in, a Dataset out (rows travel through Ray's object store):
    ds = ray.data.read_parquet("cases/")
    casetag.ray.tag_dataset(ds, "models/aftersales-bundle", concurrency=2).write_parquet("tagged/")
    # Files in, files out (each actor reads, tags and writes whole files,
    # exactly as `casetag tag` does; only file names travel through Ray):
    casetag.ray.tag_files("cases/", "tagged/", "models/aftersales-bundle", concurrency=2)
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Union

import pyarrow as pa

from . import Model, plan_files, set_threads

__all__ = ["CasetagFileTagger", "CasetagTagger", "default_actor_cpus", "tag_dataset", "tag_files"]


def _maybe_die(marker: Optional[str]) -> None:
    """Test hook for the fault-tolerance tests: with CASETAG_TEST_ACTOR_DIES_ONCE=MARKER
    and MARKER.arm present, the first actor to create MARKER (atomically,
    once per cluster) exits hard on its first batch, as a crashed worker would."""
    if not marker or not os.path.exists(marker + ".arm"):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(17)


class CasetagTagger:
    """A Ray Data actor: loads the bundle in ``__init__``, tags each batch."""

    def __init__(self, model_path: str, fallback: Optional[str] = None, text_column: str = "text",
                 batch_novelty: bool = False, threads: Optional[int] = None) -> None:
        if threads:
            set_threads(threads)
        self.model = Model(model_path, fallback=fallback, batch_novelty=batch_novelty)
        self.text_column = text_column
        self._die_marker = os.environ.get("CASETAG_TEST_ACTOR_DIES_ONCE")

    def __call__(self, batch: pa.Table) -> pa.Table:
        _maybe_die(self._die_marker)
        self._die_marker = None
        out = self.model.tag_arrow(batch, text_column=self.text_column)
        return pa.Table.from_batches([_without_views(out)])


class CasetagFileTagger:
    """A Ray Data actor: loads the bundle in ``__init__``, then tags each
    (input, output) file pair it is handed with :meth:`casetag.Model.tag_file`."""

    def __init__(self, model_path: str, fallback: Optional[str] = None, text_column: str = "text", top_k: int = 0,
                 threads: Optional[int] = None, stream_novelty: bool = False, stream_window: int = 2000) -> None:
        if threads:
            set_threads(threads)
        self.model = Model(model_path, fallback=fallback, stream_novelty=stream_novelty, stream_window=stream_window)
        self.text_column = text_column
        self.top_k = top_k
        self._die_marker = os.environ.get("CASETAG_TEST_ACTOR_DIES_ONCE")

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for src, dst in zip(batch.column("input").to_pylist(), batch.column("output").to_pylist()):
            _maybe_die(self._die_marker)
            self._die_marker = None
            r = self.model.tag_file(src, dst, text_column=self.text_column, top_k=self.top_k)
            done.append({"input": src, "output": dst, "rows": r["rows"], "untagged_rows": r["untagged_rows"],
                         "seconds": r["seconds"]})
        return pa.Table.from_pylist(done)


def _viewless(t: pa.DataType) -> pa.DataType:
    """``t`` with every ``string_view`` in it, nested ones too, as ``string``."""
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_list(t):
        return pa.large_list(pa.field(t.value_field.name, _viewless(t.value_type), t.value_field.nullable))
    if pa.types.is_list(t):
        return pa.list_(pa.field(t.value_field.name, _viewless(t.value_type), t.value_field.nullable))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _viewless(f.type), f.nullable) for f in t])
    return t


def _without_views(rb: pa.RecordBatch) -> pa.RecordBatch:
    """Ray's object store serializer does not take Arrow ``string_view``
    (the type of casetag's text columns, also inside ``actions``): cast
    those to ``string``."""
    schema = pa.schema([pa.field(f.name, _viewless(f.type), f.nullable) for f in rb.schema])
    return rb if schema == rb.schema else rb.cast(schema)


def default_actor_cpus(concurrency: int) -> float:
    """CPUs per actor when none are given: the cluster's CPUs less one, shared."""
    total = _cluster_cpus()
    return max(0.25, (total - 1.0) / max(1, concurrency)) if total > 1 else 0.5


def _cluster_cpus() -> float:
    """The CPUs of the Ray cluster (started locally when none is running)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return float(ray.cluster_resources().get("CPU", 1.0))


def _actor_kwargs(model_path: Any, fallback: Any, text_column: str, cpus: float, **extra: Any) -> Dict[str, Any]:
    """The constructor arguments of a casetag actor holding ``cpus`` CPUs:
    its compute pool gets as many threads (at least one), not one per core
    of the machine."""
    return {
        "model_path": str(model_path),
        "fallback": None if fallback is None else str(fallback),
        "text_column": text_column,
        "threads": max(1, math.ceil(cpus)),
        **extra,
    }


def tag_dataset(
    ds: Any,
    model_path: Union[str, "os.PathLike[str]"],
    *,
    batch_size: int = 4096,
    concurrency: int = 1,
    text_column: str = "text",
    fallback: Optional[Union[str, "os.PathLike[str]"]] = None,
    num_cpus: Optional[float] = None,
) -> Any:
    """Tag a Ray Dataset; returns a Dataset with the input columns kept and
    the columns ``casetag tag`` writes appended.

    Args:
        ds: a ``ray.data.Dataset`` with a text column.
        model_path: bundle directory, readable from every node.
        batch_size: rows per batch handed to an actor.
        concurrency: number of actors (each loads the bundle once).
        text_column: the column holding each case's text.
        fallback: baseline bundle answering when the model fails.
        num_cpus: CPUs reserved per actor; each actor's compute pool gets that
            many threads (at least one). By default the actors share the
            cluster's CPUs less one, which is left to Ray Data's read and write
            tasks: with every CPU held by actors the reads cannot start and the
            job waits forever (see docs/scale-out.md).
    """
    # Fail before any actor starts if the bundle is bad (same ValueError as the CLI).
    Model(model_path, fallback=fallback)
    cpus = default_actor_cpus(concurrency) if num_cpus is None else float(num_cpus)
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        CasetagTagger,
        fn_constructor_kwargs=_actor_kwargs(model_path, fallback, text_column, cpus),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=cpus,
        zero_copy_batch=True,
    )


def tag_files(
    input: Union[str, "os.PathLike[str]"],
    output: Union[str, "os.PathLike[str]"],
    model_path: Union[str, "os.PathLike[str]"],
    *,
    concurrency: int = 1,
    text_column: str = "text",
    fallback: Optional[Union[str, "os.PathLike[str]"]] = None,
    output_format: Optional[str] = None,
    top_k: int = 0,
    num_cpus: Optional[float] = None,
    stream_novelty: bool = False,
    stream_window: int = 2000,
) -> List[Dict[str, Any]]:
    """Tag every table of a directory or glob into a directory, one output
    file per input (``OUTPUT/STEM.EXT``, the names ``casetag tag`` gives),
    on Ray Data; runs the job and returns one ``{input, output, rows,
    untagged_rows, seconds}`` per file, sorted by input.

    Each actor loads the bundle once and tags whole files as ``casetag tag``
    does (read, tag and write overlapped, the output moved into place only
    when complete), so the cases never pass through Ray's object store. A
    file whose actor dies is tagged again from the start by another; the
    output then replaces the partial one. Input and output paths must be
    the same on every node (a shared file system).

    Args:
        input: a directory or glob of CSV, Parquet or JSONL tables.
        output: the output directory (created).
        model_path: bundle directory, readable from every node.
        concurrency: number of actors (each loads the bundle once).
        output_format: ``"parquet"``, ``"csv"`` or ``"jsonl"`` for every
            output (default: each input's format).
        num_cpus: CPUs reserved per actor, and the threads of its compute
            pool; by default the cluster's CPUs shared by the actors (nothing
            else in the job needs a CPU).
        stream_novelty: judge out of scope for each row against the
            ``stream_window`` rows before it in its file, as ``casetag tag
            --stream-novelty`` (each file its own stream, so the outputs do
            not depend on which actor tags which file).

    Raises:
        ValueError: no tables at ``input``, an input without the text
            column, or a bad bundle, before any actor starts (the CLI's
            one-line messages).
    """
    import ray
    from ray.data import ActorPoolStrategy

    pairs = plan_files(input, output, output_format, text_column=text_column)
    Model(model_path, fallback=fallback, stream_novelty=stream_novelty, stream_window=stream_window)
    if num_cpus is None:
        num_cpus = max(0.25, _cluster_cpus() / max(1, concurrency))
    ds = ray.data.from_items([{"input": i, "output": o} for i, o in pairs], override_num_blocks=len(pairs))
    done = ds.map_batches(
        CasetagFileTagger,
        fn_constructor_kwargs=_actor_kwargs(model_path, fallback, text_column, num_cpus, top_k=top_k,
                                            stream_novelty=stream_novelty, stream_window=stream_window),
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
    )
    return sorted(done.take_all(), key=lambda r: r["input"])
