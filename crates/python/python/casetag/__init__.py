"""casetag: three-level tags (L1/L2/L3) and actions for e-commerce aftersales cases.

Load a bundle written by ``casetag train`` once, then tag Arrow batches::

    import pyarrow as pa, casetag
    model = casetag.Model("out/quickstart/models/baseline")
    batch = pa.record_batch({"case_id": ["c1"], "text": ["where is my refund for order 123?"]})
    tagged = model.tag_arrow(batch)          # input columns, then l1, l2, l3, depth, ...
    model.tag(["parcel never arrived"])      # list of dicts, one per text

The output columns, their order, types and per-row ``error`` values are
those ``casetag tag`` writes. Computation runs with the GIL released; a
row that cannot be tagged gets its ``error`` set, never an exception for
the whole batch.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyarrow as pa

from . import _casetag

__all__ = ["Model", "OUTPUT_COLUMNS", "plan_files", "set_threads", "__version__"]

__version__: str = _casetag.__version__

#: The columns ``tag_arrow`` appends, in order (an input column of the same
#: name is kept, and the output one is then called ``pred_NAME``).
OUTPUT_COLUMNS = tuple(_casetag.OUTPUT_COLUMNS)

ArrowLike = Union[pa.RecordBatch, pa.Table, Any]


def _as_batch(data: ArrowLike) -> pa.RecordBatch:
    """A RecordBatch from a RecordBatch, a Table (chunks combined) or any
    object with the Arrow PyCapsule interface."""
    if isinstance(data, pa.RecordBatch):
        return data
    if isinstance(data, pa.Table):
        return data.combine_chunks().to_batches()[0] if data.num_rows else pa.RecordBatch.from_pylist([], schema=data.schema)
    if hasattr(data, "__arrow_c_array__"):
        return pa.record_batch(data)
    if hasattr(data, "__arrow_c_stream__"):
        return _as_batch(pa.table(data))
    raise TypeError(
        f"expected a pyarrow.RecordBatch, pyarrow.Table or an object with the Arrow "
        f"PyCapsule interface, got {type(data).__name__}"
    )


PathLike = Union[str, "os.PathLike[str]"]


def set_threads(threads: int) -> int:
    """Size this process's compute pool (default: one thread per core, or
    ``RAYON_NUM_THREADS``). Takes effect only before the process first tags
    anything; returns the number of threads the pool runs."""
    return _casetag.set_threads(int(threads))


def plan_files(
    input: PathLike, output: PathLike, output_format: Optional[str] = None, text_column: Optional[str] = None
) -> List[Tuple[str, str]]:
    """The (input, output) file pairs ``casetag tag --input INPUT --output
    OUTPUT`` tags: a single table, or every table of a directory or glob
    (sorted), each written to ``OUTPUT/STEM.EXT`` (the directory is created).

    Args:
        output_format: ``"parquet"``, ``"csv"`` or ``"jsonl"`` for every
            output file (default: each input's own format).
        text_column: when given, every input is opened and its columns
            checked, as ``casetag tag`` checks them before loading a model.

    Raises:
        ValueError: no tables there, two inputs sharing an output name, an
            output that is a file, or (with ``text_column``) an unreadable
            input or one without the column, with the CLI's one-line message.
    """
    pairs = _casetag.plan_files(os.fspath(input), os.fspath(output), output_format, text_column)
    return [(str(i), str(o)) for i, o in pairs]


class Model:
    """A casetag bundle loaded once (checksums verified exactly as the CLI does).

    Args:
        path: the bundle directory (``casetag train --out``), or a registry
            name ``NAME`` (its champion) or ``NAME/VERSION`` under
            ``$CASETAG_MODELS`` (default ``models``), as the CLI takes them.
        fallback: a baseline bundle that answers when ``path`` fails to load
            or fails on a batch (as ``casetag tag --fallback``).
        batch_novelty: judge out of scope over each batch as a whole (as
            ``casetag tag --batch-novelty``); answers then depend on the batch.
        stream_novelty: judge out of scope for each row of a file against
            the ``stream_window`` rows before it (as ``casetag tag
            --stream-novelty``; each file its own stream). For
            :meth:`tag_file` only: batches have no order to follow.

    Raises:
        ValueError: the bundle is missing, damaged or not a casetag bundle,
            with the CLI's one-line message.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], fallback: Optional[Union[str, "os.PathLike[str]"]] = None, batch_novelty: bool = False,
                 stream_novelty: bool = False, stream_window: int = 2000) -> None:
        self.path = str(path)
        self.fallback = None if fallback is None else str(fallback)
        self.batch_novelty = bool(batch_novelty)
        self.stream_novelty = bool(stream_novelty)
        self.stream_window = int(stream_window)
        window = self.stream_window if self.stream_novelty else None
        self._inner = _casetag.Model(self.path, self.fallback, self.batch_novelty, window)

    def __reduce__(self):
        # Picklable by path, so a Model can be shipped to workers (Ray, Spark).
        return (Model, (self.path, self.fallback, self.batch_novelty, self.stream_novelty, self.stream_window))

    def __repr__(self) -> str:
        info = self.info()
        return f"casetag.Model(id={info['id']!r}, kind={info['kind']!r}, path={self.path!r})"

    def info(self) -> Dict[str, Any]:
        """The answering bundle's manifest: id, kind, created, metrics, files..."""
        info = json.loads(self._inner.manifest_json())
        info["primary_loaded"] = self._inner.primary_loaded()
        return info

    def taxonomy(self) -> Dict[str, Any]:
        """The taxonomy (L1/L2/L3 nodes and their actions) the model tags with."""
        return json.loads(self._inner.taxonomy_json())

    def tag_arrow(
        self, batch: ArrowLike, text_column: str = "text", id_column: Optional[str] = None, top_k: int = 0
    ) -> pa.RecordBatch:
        """Tag every row of an Arrow batch.

        Returns a RecordBatch with the input's columns, untouched, followed
        by the columns ``casetag tag`` writes to Parquet (:data:`OUTPUT_COLUMNS`;
        ``actions`` is a list of ``{id, mode}``).

        Args:
            batch: a ``pyarrow.RecordBatch`` or ``Table``, or any object with
                the Arrow PyCapsule interface.
            text_column: the column holding each case's text.
            id_column: a column that must be present (checked, kept as is).
            top_k: also return ``top_l1..top_l3``, per level the ``top_k``
                most likely nodes as lists of ``{node, probability}``, as
                ``casetag tag --top-k`` does (0 to 50).

        Raises:
            ValueError: a named column is missing, or the text column cannot
                be read as text.
        """
        rb = _as_batch(batch)
        names = list(rb.schema.names)
        # A missing column is named by the native side, in the CLI's words.
        text = rb.column(names.index(text_column)) if text_column in names else None
        out = self._inner.tag_arrow_column(text_column, text, names, id_column, top_k)
        arrays = list(rb.columns) + [pa.array(c) for c in out]
        return pa.RecordBatch.from_arrays(arrays, names=names + [c.name for c in out])

    def tag_file(self, input: PathLike, output: PathLike, text_column: str = "text", top_k: int = 0) -> Dict[str, Any]:
        """Tag the table ``input`` (CSV, Parquet or JSONL; case- or
        turn-level) into ``output`` (its extension picks the format) exactly
        as ``casetag tag --input INPUT --output OUTPUT`` does: read, tagged
        and written in chunks, the output moved into place only when
        complete. Returns the CLI's result line (``rows``,
        ``untagged_rows``, ``seconds``, ...).

        Raises:
            ValueError: an unreadable input, a missing text column or an
                unwritable output, with the CLI's one-line message.
        """
        return json.loads(self._inner.tag_file(os.fspath(input), os.fspath(output), text_column, top_k=top_k))

    def tag(self, texts: Sequence[Optional[str]], top_k: int = 0) -> List[Dict[str, Any]]:
        """Tag a list of texts; one dict of the output columns per text."""
        rb = pa.record_batch({"text": pa.array(list(texts), pa.large_string())})
        return self.tag_arrow(rb, top_k=top_k).drop_columns(["text"]).to_pylist()
