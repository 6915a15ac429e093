"""Type stubs for the native module (see casetag/__init__.py for the public API)."""

from typing import Any, List, Optional

__version__: str
OUTPUT_COLUMNS: list[str]

class ArrowColumn:
    """One output column, exported through the Arrow PyCapsule interface."""

    @property
    def name(self) -> str: ...
    def __arrow_c_array__(self, requested_schema: Optional[Any] = None) -> tuple[Any, Any]: ...

class Model:
    def __init__(
        self, path: str, fallback: Optional[str] = None, batch_novelty: bool = False, stream_window: Optional[int] = None
    ) -> None: ...
    def manifest_json(self) -> str: ...
    def primary_loaded(self) -> bool: ...
    def taxonomy_json(self) -> str: ...
    def tag_file(
        self, input: str, output: str, text_column: str = "text", chunk_rows: int = ..., top_k: int = 0
    ) -> str: ...
    def tag_arrow_column(
        self,
        text_column: str,
        text: Optional[Any],
        input_names: List[str],
        id_column: Optional[str] = None,
        top_k: int = 0,
    ) -> List[ArrowColumn]: ...

def plan_files(
    input: str, output: str, output_format: Optional[str] = None, text_column: Optional[str] = None
) -> List[tuple[str, str]]: ...
def set_threads(threads: int) -> int: ...
