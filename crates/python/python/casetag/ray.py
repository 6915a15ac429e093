"""Batch inference on Ray Data: each actor loads the bundle once.

    import ray, casetag.ray
    ds = ray.data.read_parquet("cases/")
    out = casetag.ray.tag_dataset(ds, "models/aftersales/champion-dir", concurrency=2)
    out.write_parquet("tagged/")

Uses ``map_batches`` with a callable class, Ray's documented pattern for
batch inference with a model that is expensive to load.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import pyarrow as pa

from . import Model

__all__ = ["CasetagTagger", "default_actor_cpus", "tag_dataset"]


class CasetagTagger:
    """A Ray Data actor: loads the bundle in ``__init__``, tags each batch."""

    def __init__(self, model_path: str, fallback: Optional[str] = None, text_column: str = "text", batch_novelty: bool = False) -> None:
        self.model = Model(model_path, fallback=fallback, batch_novelty=batch_novelty)
        self.text_column = text_column
        # Test hook for the fault-tolerance test: with MARKER.arm present,
        # the first actor to create MARKER (atomically, once per cluster)
        # exits hard on its first batch, as a crashed worker would.
        self._die_marker = os.environ.get("CASETAG_TEST_ACTOR_DIES_ONCE")

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._die_marker:
            self._maybe_die(self._die_marker)
            self._die_marker = None
        out = self.model.tag_arrow(batch, text_column=self.text_column)
        return pa.Table.from_batches([_without_views(out)])

    @staticmethod
    def _maybe_die(marker: str) -> None:
        if not os.path.exists(marker + ".arm"):
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)


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
    import ray

    if not ray.is_initialized():
        ray.init()
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.25, (total - 1.0) / max(1, concurrency)) if total > 1 else 0.5


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
    threads = max(1, math.ceil(cpus))
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        CasetagTagger,
        fn_constructor_kwargs={
            "model_path": str(model_path),
            "fallback": None if fallback is None else str(fallback),
            "text_column": text_column,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=cpus,
        zero_copy_batch=True,
        # The actor's rayon pool: as many threads as the CPUs Ray gave it,
        # not one per core of the machine (env_vars merge with the job's).
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(threads)}},
    )
