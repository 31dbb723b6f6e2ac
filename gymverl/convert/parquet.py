"""The parquet side of a conversion: `ParquetSink` (shards written to scratch, renamed into place on
commit) and the column builder that turns row dicts into Arrow tables with a format's fixed schema."""

from __future__ import annotations

import contextlib
import os
import re
from array import array
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from gymverl.formats import dpo as dpo_fmt
from gymverl.formats import rl as rl_fmt
from gymverl.formats import sft as sft_fmt
from gymverl.errors import GymverlError, UsageError, from_os_error
from gymverl.files import check_outputs, commit_temp, new_temp_file, output_path, remove_quietly, scratch_dir
from gymverl.proc import shielded

from gymverl.convert.options import ConvertError


SPLITS = ("train", "val")


class ParquetSink:
    """Writes rows per split into parquet shards: temp files beside the output, renamed on `commit`.

    `output` is a directory (files `train.parquet`, `val.parquet`, or `train-00000-of-00003.parquet`
    ... with shards) or, with a single split, a `.parquet` file path (`NAME-00000-of-0000N.parquet`
    with shards). Unfinished shards live in a private scratch directory inside the output's
    directory (`gymverl.files.scratch_dir`), so an interrupted run leaves nothing a later run keeps.
    `protect` lists input files: no output may be one of them, and stale-output cleanup never
    deletes them. A write error (disk full) is raised as one sentence naming the output.
    """

    def __init__(
        self,
        output: Path,
        schema: pa.Schema,
        *,
        shard_size: int | None = None,
        dry_run: bool = False,
        batch_rows: int = 1000,
        protect: tuple[str | os.PathLike[str] | None, ...] = (),
    ) -> None:
        # A single-file output that is a symlink is written through it (`gymverl.files.output_path`).
        self.single_file = output.suffix == ".parquet"
        self.output = output_path(output) if self.single_file else output
        self.schema = schema
        self.shard_size = shard_size
        self.dry_run = dry_run
        self.batch_rows = batch_rows
        self.protect = protect
        self.dir = output.parent if self.single_file else output
        self.counts: dict[str, int] = {}  # rows per split (a split without rows has no key)
        self.image_rows = 0  # rows with an `images` cell, and the images in them
        self.tool_rows = 0  # rows with a `tools` cell (sft/dpo)
        self.images = 0
        self.warnings: list[str] = []
        self._buf: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self._shards: dict[str, list[Path]] = {s: [] for s in SPLITS}
        self._writer: dict[str, pq.ParquetWriter | None] = {s: None for s in SPLITS}
        self._in_shard: dict[str, int] = {s: 0 for s in SPLITS}  # rows in the open shard
        # Buffered rows of a split that make the next write: a batch, or what fills the open shard.
        # (Kept per split instead of derived per row: `add` runs for every row.)
        self._flush_at: dict[str, int] = {s: self._room(s) for s in SPLITS}
        self._scratch = contextlib.ExitStack()
        self._tmp_dir: Path | None = None

    def add(self, split: str, row: dict[str, Any]) -> None:
        """Queue one row for `split`; its `extra_info.split` and `.index` are set here."""
        if self.single_file and split != "train":
            raise ConvertError("a validation split needs --output to be a directory, not a .parquet file.")
        info = row["extra_info"]
        info["split"] = split
        n = self.counts.get(split, 0)
        info["index"] = n
        self.counts[split] = n + 1
        if row.get("tools"):
            self.tool_rows += 1
        images = row.get("images")
        if images:
            self.image_rows += 1
            self.images += len(images)
        if self.dry_run:
            return
        buf = self._buf[split]
        buf.append(row)
        if len(buf) >= self._flush_at[split]:
            self._flush(split)

    def _room(self, split: str) -> int:
        return min(self.batch_rows, self.shard_size - self._in_shard[split]) if self.shard_size else self.batch_rows

    def _write_error(self, exc: OSError) -> GymverlError:
        where = f"output {self.output}" if self.single_file else f"output directory {self.dir}"
        return from_os_error(exc, where)

    def _flush(self, split: str) -> None:
        buf = self._buf[split]
        if not buf:
            return
        table = _to_table(buf, self.schema)
        buf.clear()
        try:
            w = self._writer[split]
            if w is None:
                if self._tmp_dir is None:
                    self._tmp_dir = self._scratch.enter_context(scratch_dir(self.dir, kind="parquet"))
                tmp = new_temp_file(self._tmp_dir, prefix=f"{split}-", suffix=".parquet")
                self._shards[split].append(tmp)
                w = self._writer[split] = pq.ParquetWriter(tmp, self.schema, compression="zstd", use_dictionary=_dictionary_columns(self.schema))
            w.write_table(table)
            self._in_shard[split] += table.num_rows
            if self.shard_size and self._in_shard[split] >= self.shard_size:
                self._writer[split] = None
                w.close()
                self._in_shard[split] = 0
            self._flush_at[split] = self._room(split)
        except OSError as exc:
            raise self._write_error(exc) from None

    def _final_names(self, split: str, n: int) -> list[Path]:
        if self.single_file:
            stem = self.output.name[: -len(".parquet")]
            if self.shard_size:
                return [self.dir / f"{stem}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
            return [self.output]
        if self.shard_size:
            return [self.dir / f"{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        return [self.dir / f"{split}.parquet"]

    def planned_outputs(self, splits: tuple[str, ...] = SPLITS) -> list[Path]:
        """The unsharded output files of `splits` (for the up-front input/output check; `commit`
        checks the final names, shards included, again before renaming anything)."""
        return [self.output] if self.single_file else [self.dir / f"{s}.parquet" for s in splits]

    def _stale(self, keep: set[str]) -> list[Path]:
        """Earlier outputs that the new files do not overwrite (an old val.parquet, a longer old shard set).

        Only files gymverl wrote are candidates: a regular file (not a symlink) named like one of our
        outputs whose parquet columns are one of gymverl's schemas, and never an input of this run.
        Same-named files that fail these checks are left in place with a warning.
        """
        if not self.dir.is_dir():
            return []
        stems = [self.output.name[: -len(".parquet")]] if self.single_file else list(SPLITS)
        pat = re.compile(rf"^({'|'.join(map(re.escape, stems))})(-\d{{5}}-of-\d{{5}})?\.parquet$")
        stale = []
        for p in sorted(self.dir.iterdir()):
            if not pat.match(p.name) or p.name in keep:
                continue
            if _is_gymverl_output(p) and not _is_one_of(p, self.protect):
                stale.append(p)
            else:
                self.warnings.append(f"{p} looks like an earlier output but was not written by gymverl; it was left in place.")
        return stale

    def commit(self) -> dict[str, list[str]]:
        """Close every shard and move the temp files to their final names; returns split -> paths.

        Raises UsageError before renaming anything if a final name is one of `protect` (an input),
        ConvertError if one holds a file that is not Parquet (`refuse_foreign_parquet`).
        """
        files: dict[str, list[str]] = {}
        if self.dry_run:
            return files
        try:
            for split in SPLITS:
                self._flush(split)
                w = self._writer[split]
                if w is not None:
                    self._writer[split] = None
                    w.close()
        except OSError as exc:
            raise self._write_error(exc) from None
        moves = [(split, tmp, final) for split in SPLITS for tmp, final in zip(self._shards[split], self._final_names(split, len(self._shards[split])))]
        check_outputs([final for _, _, final in moves], self.protect)
        refuse_foreign_parquet([final for _, _, final in moves])  # shard names are known only now
        # A few renames: a signal now must not leave half of the new shard set beside half of the old.
        with shielded():
            for split, tmp, final in moves:
                commit_temp(tmp, final)
                files.setdefault(split, []).append(str(final))
            for split in SPLITS:
                self._shards[split] = []
            if moves:
                # The directory must describe this run only: an old val.parquet or a longer old shard
                # set would otherwise be picked up by a glob. Removed only after the new files are in
                # place (a run that keeps nothing leaves earlier outputs alone).
                remove_quietly(*self._stale({final.name for _, _, final in moves}))
        self._scratch.close()
        return files

    def abort(self) -> None:
        """Remove every temp file (after an error or interrupt); existing outputs stay as they were."""
        with shielded():
            for split in SPLITS:
                w, self._writer[split] = self._writer[split], None
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
                remove_quietly(*self._shards[split])
                self._shards[split] = []
            self._scratch.close()


def refuse_foreign_parquet(outputs: list[Path]) -> None:
    """Raise ConvertError (exit 2) when an output path holds a file that is not Parquet.

    An output replaces an earlier Parquet file (a re-run), never another file: `-o notes.parquet`
    over a text file, or a text `train.parquet` inside `-o DIR`, was replaced silently (rescore
    refuses such a slip too). An empty file, a link to a Parquet file and a stream (refused
    elsewhere, by name) pass here. Only the magic number is read: a cut Parquet file is still one
    of ours to replace.
    """
    for out in outputs:
        try:
            if not out.is_file() or out.stat().st_size == 0:
                continue
            with open(out, "rb") as f:
                if f.read(4) == b"PAR1":
                    continue
        except OSError:
            continue  # unreadable: the write itself says why
        raise ConvertError(f"{out} already exists and is not a Parquet file; choose another --output or remove it.")


def _is_gymverl_output(path: Path) -> bool:
    """True for a regular parquet file whose columns are those of one of gymverl's formats."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - not parquet (or unreadable): not ours
        return False
    # Columns added since gymverl 0.1.0: an earlier run's output lacks them and is still ours.
    return any(set(schema.names) - _ADDED_COLUMNS <= names <= set(schema.names) for schema in SCHEMAS.values())


_ADDED_COLUMNS = frozenset({"images", "agent_name"})


def _is_one_of(path: Path, others: tuple[str | os.PathLike[str] | None, ...]) -> bool:
    """True when `path` is the same file (path, symlink or hard link) as one of `others`."""
    try:
        check_outputs([path], others)
    except UsageError:
        return True
    return False


def _to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows -> Arrow table with the format's fixed schema (no type inference, so no struct merging).

    Columns of strings, integers, floats and structs of those are assembled from raw buffers:
    quicker than `Table.from_pylist`, which also imports pandas (~0.4 s) on first use. Other types
    (rl's prompt list), or any value of an unexpected type, go through `from_pylist`.
    """
    try:
        arrays = [_column(values, f) for values, f in zip(_transpose(rows, schema.names), schema)]
        return pa.Table.from_arrays(arrays, schema=schema)
    except _Unbuildable:
        storage = _storage_schema(schema)
        table = pa.Table.from_pylist(rows, schema=storage)
        return table if storage is schema else table.cast(schema)


def _storage_type(t: pa.DataType) -> pa.DataType:
    """`t` with JSON extension types replaced by their string storage (what `from_pylist` can build)."""
    if isinstance(t, pa.JsonType):
        return t.storage_type
    if pa.types.is_list(t):
        inner = _storage_type(t.value_type)
        return t if inner == t.value_type else pa.list_(pa.field(t.value_field.name, inner, t.value_field.nullable))
    return t


def _storage_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with JSON extension columns as strings (the same object when it has none)."""
    types = [_storage_type(f.type) for f in schema]
    if all(a == f.type for a, f in zip(types, schema)):
        return schema
    return pa.schema([f.with_type(a) for a, f in zip(types, schema)], metadata=schema.metadata)


class _Unbuildable(Exception):
    """A column that `_column` does not assemble itself."""


def _column(values: list[Any], f: pa.Field) -> pa.Array:
    """One Arrow array of type `f.type` from Python values (None = null); _Unbuildable otherwise."""
    t = f.type
    if isinstance(t, pa.JsonType):  # dpo's messages: JSON text, stored as strings
        return pa.ExtensionArray.from_storage(t, _column(values, f.with_type(t.storage_type)))
    n = len(values)
    types = set(map(type, values))
    if types == _NONE_ONLY and f.nullable:  # e.g. the images column of text-only rows
        return pa.nulls(n, type=t)
    allowed = _ALLOWED.get(t) or (_STRUCT_TYPES if pa.types.is_struct(t) else _LIST_TYPES if type(t) is pa.ListType else frozenset())
    if not types <= allowed:
        raise _Unbuildable
    nulls = values.count(None) if type(None) in types else 0
    if nulls and not f.nullable:
        raise _Unbuildable
    bitmap = _validity(values) if nulls else None
    if t == pa.string():
        if str not in types:  # JSON cells (`formats.json_cell`): UTF-8 bytes already, stored as they are
            encoded = [v if v is not None else b"" for v in values] if nulls else values
            data = b"".join(encoded)
            lengths = list(map(len, encoded))
        elif bytes in types:  # (str and bytes in one column: no format writes that)
            raise _Unbuildable
        else:
            texts = [v if v is not None else "" for v in values] if nulls else values
            joined = "".join(texts)
            if joined.isascii():  # one character per byte: no per-value encoding needed
                data = joined.encode()
                lengths = list(map(len, texts))
            else:
                try:
                    encoded = [v.encode() for v in texts]
                except UnicodeEncodeError:  # lone surrogates: Arrow reports them
                    raise _Unbuildable from None
                data = b"".join(encoded)
                lengths = list(map(len, encoded))
        if len(data) >= 2**31:  # beyond 32-bit offsets: Arrow decides what to do
            raise _Unbuildable
        offsets = array("i", accumulate(lengths, initial=0))
        return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls)
    if t == pa.int64() or t == pa.float64():
        try:
            buf = array("q" if t == pa.int64() else "d", [v if v is not None else 0 for v in values] if nulls else values)
        except OverflowError:  # beyond 64 bits: Arrow reports it
            raise _Unbuildable from None
        return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(buf)], null_count=nulls)
    if pa.types.is_struct(t):
        if nulls:
            raise _Unbuildable
        fields = list(t)
        children = _transpose(values, [c.name for c in fields])
        return pa.StructArray.from_arrays([_column(v, c) for v, c in zip(children, fields)], fields=fields)
    if type(t) is pa.ListType:
        # rl's prompt (a list of {role, content}): offsets + the flattened items as one child column,
        # so a conversion never needs `from_pylist` (and its pandas import) for it.
        items = list(chain.from_iterable(v for v in values if v is not None))
        if len(items) >= 2**31:  # beyond 32-bit offsets: Arrow decides what to do
            raise _Unbuildable
        offsets = array("i", accumulate((len(v) if v is not None else 0 for v in values), initial=0))
        child = _column(items, t.value_field)
        return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(offsets)], null_count=nulls, children=[child])
    raise _Unbuildable


_NONE_ONLY = frozenset({type(None)})
_STR_TYPES = frozenset({str, bytes, type(None)})  # bytes: UTF-8 JSON text (`formats.json_cell`)
_INT_TYPES = frozenset({int, type(None)})
_FLOAT_TYPES = frozenset({float, int, type(None)})
_STRUCT_TYPES = frozenset({dict, type(None)})
_LIST_TYPES = frozenset({list, type(None)})
_ALLOWED = {pa.string(): _STR_TYPES, pa.int64(): _INT_TYPES, pa.float64(): _FLOAT_TYPES}


def _transpose(dicts: list[dict[str, Any]], names: list[str]) -> list[list[Any]]:
    """Columns `names` of a list of dicts (a missing key reads as None)."""
    if not all(type(d) is dict for d in dicts):
        raise _Unbuildable
    if not dicts:  # (zip(*...) of no rows would give no columns at all)
        return [[] for _ in names]
    try:
        if len(names) == 1:
            return [list(map(itemgetter(names[0]), dicts))]
        return [list(col) for col in zip(*map(itemgetter(*names), dicts))]
    except KeyError:
        return [[d.get(k) for d in dicts] for k in names]


def _validity(values: list[Any]) -> pa.Buffer:
    """Arrow validity bitmap (LSB first): a bit per value, set unless it is None."""
    bits = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v is not None:
            bits[i >> 3] |= 1 << (i & 7)
    return pa.py_buffer(bytes(bits))


SCHEMAS = {"sft": sft_fmt.SCHEMA, "rl": rl_fmt.SCHEMA, "dpo": dpo_fmt.SCHEMA}

# Leaf columns whose values are (nearly) all distinct: a rollout's conversation, a task's prompt and
# record, image bytes. Parquet's dictionary encoding would hash each value before giving up on the
# column (Arrow falls back to plain encoding once a dictionary passes 1 MiB): they are written
# plain from the start, the rest (sources, task keys, tools, rewards, ...) dictionary-encoded.
_PLAIN_LEAVES = frozenset(
    {"messages", "prompt.list.element", "chosen.list.element", "rejected.list.element", "prompt.list.element.content", "extra_info.nemo_gym", "images.list.element.bytes"}
)


def _leaves(f: pa.Field, prefix: str = "") -> Iterator[str]:
    """The parquet column paths of field `f` (`extra_info.task_key`, `images.list.element.bytes`: a list's
    values are `element`, the parquet spec's name, which pyarrow writes by default)."""
    name = prefix + f.name
    if pa.types.is_struct(f.type):
        for child in f.type:
            yield from _leaves(child, name + ".")
    elif type(f.type) is pa.ListType:
        yield from _leaves(f.type.value_field.with_name("element"), name + ".list.")
    else:
        yield name


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The column paths of `schema` worth dictionary encoding (`use_dictionary`): all but `_PLAIN_LEAVES`."""
    return [path for f in schema for path in _leaves(f) if path not in _PLAIN_LEAVES]
