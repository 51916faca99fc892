"""Read one caption table (CSV, JSON / JSON lines, Parquet) as a `datasets.Dataset`, or say in one line why not.

Hand-made tables go wrong in a few known ways, each caught here rather than misread: a spreadsheet's CSV
separated by `;` (European locales), tabs or `|` (the separator is detected with `csv.Sniffer`); a file saved
in a legacy encoding such as Windows' cp1252 (named, with the fix: save it as UTF-8); an empty file or a
header without rows; and pandas' index written as a column (`__index_level_0__`), which is dropped.
"""

from __future__ import annotations

import codecs
import csv
import re
from functools import partial
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from alt_text_recipes.data.errors import DatasetError, first_line

TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SEPARATORS = ",;\t|"
SEPARATOR_NAMES = "comma, semicolon, tab, |"
PANDAS_INDEX = re.compile(r"__index_level_\d+__")
SNIFFED_BYTES = 64 * 1024
CHUNK_BYTES = 1 << 20


def read_table(file: Path) -> Dataset:
    """The rows of a CSV / JSON / JSONL / Parquet file (its builder from the suffix)."""
    builder, options = _builder_and_options(file)
    try:
        table = load_dataset(builder, data_files=str(file), split="train", **options)
    except (DatasetGenerationError, ValueError, StopIteration) as error:
        raise _unreadable(file, builder, error) from None
    return _without_pandas_index(table)


def first_row(file: Path, sniff_separator: bool = True) -> dict:
    """The first row of a table file, read as `read_table` reads it (empty if it has none); without
    `sniff_separator`, a CSV is read comma-separated, as `datasets` reads imagefolder metadata."""
    builder, options = _builder_and_options(file, sniff_separator)
    try:
        rows = load_dataset(builder, data_files=str(file), split="train", streaming=True, **options)
        row = next(iter(rows), {})
    except (DatasetGenerationError, ValueError, StopIteration) as error:
        raise _unreadable(file, builder, error) from None
    return {name: value for name, value in row.items() if not PANDAS_INDEX.fullmatch(name)}


def csv_separator(file: Path) -> str:
    """The column separator of a CSV file (one of `,;\\t|`), from its first lines."""
    with file.open(encoding="utf-8", newline="") as handle:
        sample = handle.read(SNIFFED_BYTES)
    if len(sample) == SNIFFED_BYTES and "\n" in sample:
        sample = sample[: sample.rfind("\n") + 1]  # whole lines only: a cut one would count fewer separators
    if not sample.strip():
        raise DatasetError(f"{file} is empty: it holds only blank lines.")
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        raise DatasetError(
            f"{file}: cannot tell its column separator (tried {SEPARATOR_NAMES}) from its first lines (the "
            f"first is {sample.splitlines()[0][:80]!r}); it needs an image and a caption column split by one of them."
        ) from None


def require_utf8(file: Path) -> None:
    """Refuse a text file that is not UTF-8 (read in chunks: a caption file can be large), naming the line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with file.open("rb") as handle:
        for chunk in iter(partial(handle.read, CHUNK_BYTES), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line = lines + error.object[: error.start].count(b"\n") + 1
                raise DatasetError(
                    f"{file} is not UTF-8 text (line {line} has the byte {error.object[error.start]:#04x}, as "
                    "files saved as Windows-1252 / Latin-1 do): save it as UTF-8 (a spreadsheet's "
                    "'CSV UTF-8') and run again."
                ) from None
            lines += chunk.count(b"\n")


def require_content(file: Path) -> None:
    """Refuse an empty table file, and a text one (CSV, JSON) that is not UTF-8."""
    if file.stat().st_size == 0:
        raise DatasetError(f"{file} is an empty file (0 bytes): it holds no captions.")
    if TABLE_BUILDERS[file.suffix.lower()] != "parquet":
        require_utf8(file)


def _builder_and_options(file: Path, sniff_separator: bool = True) -> tuple[str, dict]:
    builder = TABLE_BUILDERS[file.suffix.lower()]
    require_content(file)
    if builder == "json":
        _require_json_rows(file)
    return builder, {"sep": csv_separator(file)} if builder == "csv" and sniff_separator else {}


def _require_json_rows(file: Path) -> None:
    """JSON rows are a list or objects (one a line for JSON lines); anything else holds no rows. Checked before
    pyarrow reads it: a file that starts with `null` crashes pyarrow 26's JSON reader (a segmentation fault)."""
    with file.open(encoding="utf-8-sig") as handle:
        start = handle.read(1024).lstrip()[:20]
    if not start.startswith(("[", "{")):
        raise DatasetError(f"{file} holds no rows: JSON rows are a list or objects, and it starts with {start!r}.")


def _unreadable(file: Path, builder: str, error: BaseException) -> DatasetError:
    cause = error.__cause__ or error
    # What `datasets` raises for a table without rows: "corresponds to no data", or StopIteration (blank JSON).
    if isinstance(error, StopIteration) or (isinstance(error, ValueError) and "corresponds to no data" in str(error)):
        return DatasetError(f"{file} is empty: it has no rows (a header alone, or an empty list).")
    return DatasetError(f"{file} could not be read as {builder.upper()}: {first_line(cause, with_type=True)}")


def _without_pandas_index(table: Dataset) -> Dataset:
    """pandas writes its row index as a column (`__index_level_0__`, also where a CSV row has one field more than
    its header): never a caption or an image, so it is not listed among the columns."""
    index_columns = [name for name in table.column_names if PANDAS_INDEX.fullmatch(name)]
    return table.remove_columns(index_columns) if index_columns else table
