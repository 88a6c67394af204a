"""Read and write LArCV1 ``Image2D`` products (``larcv::EventImage2D``) in ROOT files.

A LArCV1 file holds, per producer ``P``, a TTree ``image2d_P_tree`` with one split branch
``image2d_P_branch`` of class ``larcv::EventImage2D``: the event ids (run, subrun, event) and a vector of
images, each with its :class:`ImageMeta` and its pixels stored column by column (index = col*rows + row).
Entry ``i`` of every producer's tree belongs to the same event.

Reading uses uproot (pure Python) and streams: at most about ``_CHUNK_BYTES`` of uncompressed data is held
at a time, whatever the file size; the baskets of a chunk are decompressed by several threads at once
(:data:`READ_THREADS`; zlib, LZMA, LZ4 and ZStandard let other threads run meanwhile).  Writing uses ROOT's
Python bindings, declaring classes with the genuine names, members and member order, so the files carry the
genuine streamer checksums and LArCV1 reads them.
uproot and ROOT are imported only when a file is read or written.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import functools
import logging
import operator
import os
import re
import secrets
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterator, Mapping, Sequence, Tuple, Union

import numpy as np

from ssnet_common.errors import LArCV1Error
from ssnet_common.files import put_in_place
from ssnet_data.imagemeta import ImageMeta

if TYPE_CHECKING:
    from types import TracebackType

    import numpy.typing as npt

logger = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]
ImageLike = Union["Image2D", Tuple[ImageMeta, "npt.ArrayLike"]]
"""What :meth:`LArCV1Writer.write_entry` accepts per image: an :class:`Image2D` or ``(meta, pixels)``."""

INVALID_ID = 2**64 - 1
"""``larcv::kINVALID_SIZE``: LArCV1 treats an event whose run, subrun or event equals it as having no id."""



def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


READ_THREADS = min(4, _usable_cpus())
"""Threads of a :class:`LArCV1Reader` that decompress baskets in parallel, by default: up to 4, no more than the
CPUs usable.  1: none, the reading thread decompresses."""

_CHUNK_BYTES = 64 * 1024**2
_TRANSPOSE_BLOCK = 64
_PRODUCER_RE = re.compile(r"\w+", re.ASCII)

# Leaves of the split EventImage2D branch that the reader needs, named as uproot names them.
_ID_LEAVES = ("_run", "_subrun", "_event")
_PIXEL_LEAF = "_image_v._img"
_META_LEAVES = {  # ImageMeta field -> leaf
    "origin_x": "_image_v._meta._origin.x",
    "origin_y": "_image_v._meta._origin.y",
    "width": "_image_v._meta._width",
    "height": "_image_v._meta._height",
    "rows": "_image_v._meta._row_count",
    "cols": "_image_v._meta._col_count",
    "plane": "_image_v._meta._plane",
}
_LEAVES = (*_ID_LEAVES, _PIXEL_LEAF, *_META_LEAVES.values())


def tree_name(producer: str) -> str:
    """The name of the TTree that holds ``producer``'s Image2D products."""
    return f"image2d_{producer}_tree"


def branch_name(producer: str) -> str:
    """The name of the branch, in :func:`tree_name`, that holds ``producer``'s Image2D products."""
    return f"image2d_{producer}_branch"


@dataclass(frozen=True, eq=False, init=False)
class Image2D:
    """One image: its meta and its pixels, ``pixels[row, col] == larcv::Image2D::pixel(row, col)``.

    ``pixels`` is a C-contiguous float32 array of shape ``(meta.rows, meta.cols)``, row 0 at the top (the
    latest tick).  Any 2-D array of real numbers with that shape is accepted and converted; anything else
    raises ``ValueError``.  Instances compare by identity: compare ``meta`` and ``pixels`` explicitly.
    """

    meta: ImageMeta
    pixels: npt.NDArray[np.float32]

    def __init__(self, meta: ImageMeta, pixels: npt.ArrayLike) -> None:
        if not isinstance(meta, ImageMeta):
            raise ValueError(f"meta must be an ImageMeta, got {type(meta).__name__}")
        array = np.asarray(pixels)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"pixels must be real numbers, got dtype {array.dtype}")
        if array.shape != meta.shape:
            raise ValueError(f"pixels have shape {array.shape} but the meta says (rows, cols) = {meta.shape}")
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "pixels", np.ascontiguousarray(array, dtype=np.float32))


@dataclass(frozen=True, eq=False)
class LArCV1Entry:
    """One entry (event) as read: its global index, its ids and, per producer, its images in stored order."""

    entry: int
    run: int
    subrun: int
    event: int
    products: Mapping[str, Tuple[Image2D, ...]]

    @property
    def images(self) -> tuple[Image2D, ...]:
        """The images of the one producer read; an error if the entry holds several producers."""
        if len(self.products) != 1:
            raise LArCV1Error(
                f"entry holds producers {sorted(self.products)}: use products[producer]", entry=self.entry
            )
        (images,) = self.products.values()
        return images


def list_image2d_producers(path: StrPath) -> list[str]:
    """The producers of the Image2D trees in a LArCV1 file, sorted."""
    with _open_root(Path(path)) as file:
        return _image2d_producers(file, Path(path))


def read_annotation(path: StrPath, name: str) -> str | None:
    """The text :meth:`LArCV1Writer.annotate` stored under ``name`` (the ``TNamed``'s title); None if none."""
    with _open_root(Path(path)) as file:
        try:
            if file.classname_of(name, encoded=False) != "TNamed":
                return None
            return str(file[name].member("fTitle"))
        except KeyError:
            return None
        except Exception as exc:  # uproot raises many kinds for damaged objects
            raise LArCV1Error(f"cannot read {name!r}: {exc}", path=str(path)) from exc


@dataclass(frozen=True)
class _Source:
    path: Path
    first: int  # global index of the file's first entry
    entries: int


class LArCV1Reader:
    """Entries of one or several LArCV1 files, read as one sequence, for one producer or several.

    ``LArCV1Reader(paths, "wire")`` reads one producer (``entry.images``);
    ``LArCV1Reader(paths, producers=["wire", "segment"])`` reads several at once (``entry.products``), and
    checks that they agree on every entry's run, subrun and event.  Files are opened when entries are read
    and closed after, so a reader holds no open file between calls.

    ``threads``: how many threads decompress the baskets of each chunk of entries in parallel while iterating
    (1: the iterating thread does it all).  They exist only while an iteration is under way: they stop when it
    ends, fails or is closed (``close()`` on the iterator, or leaving a ``with closing(...)`` block).
    """

    def __init__(
        self,
        paths: StrPath | Sequence[StrPath],
        producer: str | None = None,
        *,
        producers: Sequence[str] | None = None,
        threads: int = READ_THREADS,
    ) -> None:
        if (producer is None) == (producers is None):
            raise LArCV1Error("give either one producer or a sequence of producers")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LArCV1Error(f"threads must be a whole number, at least 1, got {threads!r}")
        self.threads = threads
        wanted = (producer,) if producer is not None else tuple(producers or ())
        if not wanted or len(set(wanted)) != len(wanted):
            raise LArCV1Error(f"producers must be distinct and at least one, got {list(wanted)}")
        self.producers: tuple[str, ...] = wanted
        given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not given:
            raise LArCV1Error("no input file given")
        self.paths: tuple[Path, ...] = tuple(Path(p) for p in given)
        self._sources: list[_Source] = []
        first = 0
        for path in self.paths:
            with _open_root(path) as file:
                entries = _count_entries(self._trees(file, path), path)
            self._sources.append(_Source(path, first, entries))
            first += entries
        self._len = first
        logger.debug("reading %s from %d file(s): %d entries", self.producers, len(self.paths), first)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> LArCV1Entry:
        """Entry ``index`` (negative counts from the end)."""
        position = operator.index(index)
        if position < 0:
            position += self._len
        if not 0 <= position < self._len:
            raise LArCV1Error(f"entry {index} is out of range: the input holds {self._len} entries", **self._where())
        source = self._sources[bisect.bisect_right([s.first for s in self._sources], position) - 1]
        local = position - source.first
        (entry,) = self._read_file(source, local, local + 1)
        return entry

    def __iter__(self) -> Generator[LArCV1Entry, None, None]:
        return self.iter_range()

    def locate(self, index: int) -> tuple[Path, int]:
        """The file holding global entry ``index``, and the entry's index within that file."""
        if not 0 <= index < self._len:
            raise LArCV1Error(f"entry {index} is out of range: the input holds {self._len} entries", **self._where())
        source = self._sources[bisect.bisect_right([s.first for s in self._sources], index) - 1]
        return source.path, index - source.first

    def iter_range(self, start: int = 0, stop: int | None = None) -> Generator[LArCV1Entry, None, None]:
        """Entries ``start`` (included) to ``stop`` (excluded, default: the end), reading in chunks."""
        end = self._len if stop is None else stop
        if not 0 <= start <= end <= self._len:
            raise LArCV1Error(
                f"entry range [{start}, {end}) is not within the {self._len} entries of the input",
                **self._where(),
            )
        return self._iter_range(start, end)

    def _iter_range(self, start: int, stop: int) -> Generator[LArCV1Entry, None, None]:
        with _decompressors(self.threads) as executor:  # shut down however the iteration ends
            for source in self._sources:
                local_start = max(start - source.first, 0)
                local_stop = min(stop - source.first, source.entries)
                if local_start < local_stop:
                    yield from self._read_file(source, local_start, local_stop, executor)

    def _where(self) -> dict[str, Any]:
        return {"path": str(self.paths[0])} if len(self.paths) == 1 else {}

    def _trees(self, file: Any, path: Path) -> list[Any]:
        present = _image2d_producers(file, path)
        for producer in self.producers:
            if producer not in present:
                raise LArCV1Error(
                    f"no Image2D producer {producer!r} in the file (it has: {', '.join(present) or 'none'})",
                    path=str(path),
                    producer=producer,
                )
        try:
            return [file[tree_name(producer)] for producer in self.producers]
        except Exception as exc:  # uproot raises many kinds (OSError, ValueError, DeserializationError...)
            raise LArCV1Error(f"cannot read the Image2D trees: {exc}", path=str(path)) from exc

    def _read_file(self, source: _Source, start: int, stop: int, executor: Any = None) -> Iterator[LArCV1Entry]:
        """Entries ``[start, stop)`` of one file (local indexes), reading about ``_CHUNK_BYTES`` at a time;
        ``executor``: where uproot decompresses the baskets (None: in this thread)."""
        parallel = {} if executor is None else {"decompression_executor": executor}
        with _open_root(source.path) as file:
            trees = self._trees(file, source.path)
            budget = _CHUNK_BYTES // len(trees)
            step = max(
                1, min(tree.num_entries_for(budget, filter_name=_LEAVES, entry_start=start) for tree in trees)
            )
            logger.debug("reading entries [%d, %d) of %s, %d at a time", start, stop, source.path, step)
            for chunk_start in range(start, stop, step):
                chunk_stop = min(chunk_start + step, stop)
                try:
                    columns = [
                        tree.arrays(
                            filter_name=_LEAVES, entry_start=chunk_start, entry_stop=chunk_stop, library="np",
                            **parallel,
                        )
                        for tree in trees
                    ]
                except Exception as exc:  # uproot raises many kinds (zlib.error, DeserializationError...)
                    raise LArCV1Error(
                        f"cannot read entries {source.first + chunk_start} to {source.first + chunk_stop - 1}: "
                        f"{exc}",
                        path=str(source.path),
                    ) from exc
                for row in range(chunk_stop - chunk_start):
                    yield self._entry(source, source.first + chunk_start + row, columns, row)
                del columns  # the entries hold their own pixels: free the chunk before reading the next one

    def _entry(self, source: _Source, entry: int, columns: list[dict[str, Any]], row: int) -> LArCV1Entry:
        ids: tuple[int, ...] | None = None
        ids_from = ""
        products: dict[str, tuple[Image2D, ...]] = {}
        for producer, column in zip(self.producers, columns):
            these = tuple(int(column[leaf][row]) for leaf in _ID_LEAVES)
            # As LArCV1 does, only ids that are set must agree (a product that was never filled has none).
            if INVALID_ID not in these:
                if ids is None:
                    ids, ids_from = these, producer
                elif these != ids:
                    raise LArCV1Error(
                        f"(run, subrun, event) = {these} but producer {ids_from!r} has {ids}",
                        path=str(source.path), entry=entry, producer=producer,
                    )
            pixels = column[_PIXEL_LEAF][row]
            metas = {field: column[leaf][row] for field, leaf in _META_LEAVES.items()}
            products[producer] = tuple(
                _image(pixels[index], {field: values[index].item() for field, values in metas.items()},
                       source.path, entry, producer, index)
                for index in range(len(pixels))
            )
        run, subrun, event = ids or (INVALID_ID,) * 3
        return LArCV1Entry(entry=entry, run=run, subrun=subrun, event=event, products=products)


@contextlib.contextmanager
def _decompressors(threads: int) -> Iterator[concurrent.futures.ThreadPoolExecutor | None]:
    """A pool of ``threads`` threads for uproot to decompress baskets in (None for 1), shut down on leaving.

    Its threads start at the first baskets handed to it.  uproot hands it only ``submit()`` calls, and passes
    the errors of its tasks back to the reading thread, where they are raised.
    """
    if threads <= 1:
        yield None
        return
    executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ssnet-larcv1-read")
    try:
        yield executor
    finally:  # after an error or a close half-way, baskets not yet begun are dropped
        executor.shutdown(wait=True, cancel_futures=True)


def _image(stored: Any, meta_fields: dict[str, Any], path: Path, entry: int, producer: str, index: int) -> Image2D:
    """Build an Image2D from its stored column-major pixels and its meta fields."""
    values = np.asarray(stored)
    meta = ImageMeta(**meta_fields)
    if values.size != meta.rows * meta.cols:
        raise LArCV1Error(
            f"image {index}: the meta says {meta.rows} rows x {meta.cols} cols but {values.size} pixels are stored",
            path=str(path), entry=entry, producer=producer,
        )
    return Image2D(meta, _column_major_to_rows(values, meta.rows, meta.cols))


def _column_major_to_rows(values: npt.NDArray[Any], rows: int, cols: int) -> npt.NDArray[np.float32]:
    """The (rows, cols) C-order float32 array of pixels stored column by column (index = col*rows + row).

    The transpose goes by blocks of columns that stay in the CPU cache: 5-8 times faster than one
    ``ascontiguousarray(a.T)`` on 512x512 to 1008x3456 images.  Each block is converted from the stored type
    (big-endian floats) as it is copied: one pass over the pixels, not a conversion and then a transpose.
    """
    columns = values.reshape(cols, rows)
    pixels = np.empty((rows, cols), dtype=np.float32)
    for start in range(0, cols, _TRANSPOSE_BLOCK):
        pixels[:, start:start + _TRANSPOSE_BLOCK] = columns[start:start + _TRANSPOSE_BLOCK].T
    return pixels


def check_root_file(path: StrPath) -> None:
    """:class:`LArCV1Error` in the user's words unless ``path`` is a whole ROOT file: it exists, is a file, starts
    with ROOT's signature and is as long as its header says (``fEND``: a copy cut short is "truncated")."""
    where = str(path)
    try:
        with open(path, "rb") as file:
            header = file.read(20)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise LArCV1Error("no such file", path=where) from None
    except IsADirectoryError:
        raise LArCV1Error("a directory, not a file", path=where) from None
    except OSError as exc:
        raise LArCV1Error(f"cannot read it: {exc.strerror or exc}", path=where) from None
    if len(header) < 16 or not header.startswith(b"root"):
        raise LArCV1Error("not a ROOT file" + (" (empty)" if not size else ""), path=where)
    (version,) = struct.unpack_from(">i", header, 4)
    large = version >= _ROOT_LARGE_FILE and len(header) >= 20  # then ROOT's pointers take 8 bytes
    (end,) = struct.unpack_from(">q" if large else ">i", header, 12)
    if size < end:
        raise LArCV1Error(f"truncated: {size:,} of {end:,} bytes", path=where)


# A ROOT file's header starts "root", fVersion, fBEGIN (4 bytes each), then fEND, the file's length: 4 bytes, or 8
# when fVersion is 1000000 or more (a large file).
_ROOT_LARGE_FILE = 1000000


@contextlib.contextmanager
def _open_root(path: Path) -> Iterator[Any]:
    try:
        import uproot
    except ImportError as exc:
        raise LArCV1Error(f"reading LArCV1 files needs uproot: {exc}", path=str(path)) from exc
    check_root_file(path)
    try:
        # A Path, not a str: uproot would read "name.root:object" in a str as an object path.
        file = uproot.open(path, array_cache=None)
    except Exception as exc:  # uproot raises OSError, ValueError... for files it cannot read
        raise LArCV1Error(f"not a readable ROOT file ({exc})", path=str(path)) from exc
    with file:
        yield file


def _image2d_producers(file: Any, path: Path) -> list[str]:
    prefix, suffix = "image2d_", "_tree"
    try:
        classes = file.classnames(recursive=False, cycle=False)
    except Exception as exc:  # uproot raises many kinds for damaged directories
        raise LArCV1Error(f"cannot list the file's objects: {exc}", path=str(path)) from exc
    return sorted(
        name[len(prefix):-len(suffix)]
        for name, classname in classes.items()
        if classname == "TTree" and name.startswith(prefix) and name.endswith(suffix)
        and len(name) > len(prefix) + len(suffix)
    )


def _count_entries(trees: list[Any], path: Path) -> int:
    counts = {tree.name: tree.num_entries for tree in trees}
    if len(set(counts.values())) != 1:
        raise LArCV1Error(f"the producers' trees hold different numbers of entries: {counts}", path=str(path))
    return int(trees[0].num_entries)


# ----------------------------------------------------------------------------------------------- writing

# The LArCV1 data classes as ROOT sees them: names, member names, types and order as in LArCV1 (size_t is
# unsigned long), no ClassDef (LArCV1 has none: class version 1, its base class version -1).  ROOT derives
# the streamer checksums from exactly these, so the written files carry the genuine ones.  Data members
# are public here (access does not enter the checksum).  ssnet_larcv1::prepare_image sizes an image's pixel
# vector and returns its address; numpy then transposes the row-major pixels straight into it (cling's
# JIT-compiled code runs a pixel loop several times slower than numpy's compiled copy).
_CLASSES_CPP = r"""
#include <cstdint>
#include <string>
#include <vector>

namespace larcv {
class Point2D {
public:
  double x = 0., y = 0.;
};
class ImageMeta {
public:
  unsigned short _image_id = 65535;
  Point2D _origin;
  double _width = 0., _height = 0.;
  unsigned long _col_count = 0, _row_count = 0;
  unsigned short _plane = 65535;
};
class Image2D {
public:
  std::vector<float> _img;
  unsigned short _id = 0;
  ImageMeta _meta;
};
class EventBase {
public:
  virtual ~EventBase() = default;
  std::string _producer;
  unsigned long _run = 0, _subrun = 0, _event = 0;
};
class EventImage2D : public EventBase {
public:
  std::vector<larcv::Image2D> _image_v;
};
}

namespace ssnet_larcv1 {
// Makes the event hold `count` images.  The images already there are kept, with their pixel vectors'
// storage, so that an entry like the previous one allocates (and page-faults) nothing.
inline void set_image_count(larcv::EventImage2D& event, unsigned long count) { event._image_v.resize(count); }

// Gives image `index` of the event its id and meta and rows * cols pixels, and returns the address of the
// pixels, which the caller fills column by column (index = col * rows + row).  Touches no Python object.
inline std::uintptr_t prepare_image(larcv::EventImage2D& event, unsigned long index, unsigned short id,
                                    unsigned long rows, unsigned long cols, double origin_x, double origin_y,
                                    double width, double height, unsigned short plane) {
  larcv::Image2D& image = event._image_v.at(index);
  image._img.resize(rows * cols);
  image._id = id;
  image._meta = larcv::ImageMeta();
  image._meta._origin.x = origin_x;
  image._meta._origin.y = origin_y;
  image._meta._width = width;
  image._meta._height = height;
  image._meta._row_count = rows;
  image._meta._col_count = cols;
  image._meta._plane = plane;
  return reinterpret_cast<std::uintptr_t>(image._img.data());
}
}
"""

COMPRESSION = 101
"""ROOT compression setting of written files: zlib level 1, as the genuine files."""
BASKET_SIZE = 32000
SPLIT_LEVEL = 99


def load_writer_backend() -> None:
    """Import ROOT and declare the classes now (about a second), rather than at the first write; raises
    :class:`LArCV1Error` if ROOT is missing."""
    _root()


@functools.cache
def _root() -> Any:
    """ROOT, with the LArCV1 classes declared (once per process)."""
    try:
        with warnings.catch_warnings():  # the pip build of ROOT warns at every import that it is an alpha
            warnings.filterwarnings("ignore", message="(?s).*alpha stage", category=UserWarning)
            import ROOT
    except ImportError as exc:
        raise LArCV1Error(f"writing LArCV1 files needs ROOT's Python bindings: {exc}") from exc
    if not ROOT.gInterpreter.Declare(_CLASSES_CPP):
        raise LArCV1Error("ROOT refused the LArCV1 class declarations (are other larcv classes loaded?)")
    # Filling and compressing baskets, and sizing pixel vectors, need no Python: let other threads (reading
    # the next entries, talking to the broker) run meanwhile.  numpy releases the GIL itself while it copies.
    ROOT.ssnet_larcv1.prepare_image.__release_gil__ = True
    ROOT.TTree.Fill.__release_gil__ = True
    return ROOT


class LArCV1Writer:
    """Write entries of Image2D products to a LArCV1 file, as the genuine ``larcv::IOManager`` does.

    Use as a context manager.  Every producer given here gets a tree and an entry for every
    :meth:`write_entry` (empty when the entry has no images for it).  The file is written under a
    temporary name in the same directory and renamed to ``path`` when the ``with`` block ends normally;
    if it ends with an exception the temporary file is deleted and ``path`` is left untouched.
    """

    def __init__(self, path: StrPath, producers: str | Sequence[str]) -> None:
        self.path = Path(path)
        names = (producers,) if isinstance(producers, str) else tuple(producers)
        bad = [name for name in names if not _PRODUCER_RE.fullmatch(name)]
        if not names or bad or len(set(names)) != len(names):
            raise LArCV1Error(
                f"producers must be distinct names of letters, digits and '_', at least one: got {list(names)}",
                path=str(self.path),
            )
        self.producers: tuple[str, ...] = names
        self.entries_written = 0
        self._temp: Path | None = None
        self._file: Any = None
        self._trees: dict[str, Any] = {}
        self._products: dict[str, Any] = {}
        self._annotations: dict[str, str] = {}

    def __enter__(self) -> LArCV1Writer:
        if self._temp is not None:
            raise LArCV1Error("the writer is already open", path=str(self.path))
        if not self.path.parent.is_dir():
            raise LArCV1Error("no such directory", path=str(self.path))
        root = _root()
        self._temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp.root")
        try:
            self._create(root, self._temp)
        except BaseException:
            self._discard()
            raise
        logger.debug("writing %s to %s", self.producers, self._temp)
        return self

    def _create(self, root: Any, temp: Path) -> None:
        self._file = root.TFile(str(temp), "RECREATE", "", COMPRESSION)
        if self._file.IsZombie():
            raise LArCV1Error(f"ROOT cannot create {temp}", path=str(self.path))
        self._file.cd()
        # ROOT warns that the declared classes have "no streamer or dictionary": they are interpreted, and
        # the split branch streams every member all the same (the tests read every member back).
        ignore_level, root.gErrorIgnoreLevel = root.gErrorIgnoreLevel, root.kError
        try:
            for producer in self.producers:
                tree = root.TTree(tree_name(producer), f"{producer} tree")
                root.SetOwnership(tree, False)  # the file owns and deletes it
                product = root.larcv.EventImage2D()
                product._producer = producer
                tree.Branch(branch_name(producer), product, BASKET_SIZE, SPLIT_LEVEL)
                self._trees[producer] = tree
                self._products[producer] = product
        finally:
            root.gErrorIgnoreLevel = ignore_level

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._commit()
        else:
            self._discard()

    def write_entry(
        self, run: int, subrun: int, event: int, images: Mapping[str, Sequence[ImageLike]]
    ) -> None:
        """Append one entry: its ids and, per producer, its images (a producer left out gets none).

        Everything is checked before anything is written, so an entry that raises is not written at all.
        """
        if self._temp is None:
            raise LArCV1Error("write_entry() needs the writer open (use it in a with block)", path=str(self.path))
        where: dict[str, Any] = {"path": str(self.path), "entry": self.entries_written}
        for producer in images:
            if producer not in self.producers:
                raise LArCV1Error(
                    f"not one of the writer's producers {list(self.producers)}", producer=producer, **where
                )
        ids = [_event_id(name, value, where) for name, value in zip(("run", "subrun", "event"), (run, subrun, event))]
        checked = {
            producer: [
                _checked_image(item, index, producer, where) for index, item in enumerate(images.get(producer, ()))
            ]
            for producer in self.producers
        }
        root = _root()
        for producer in self.producers:
            product = self._products[producer]
            product._run, product._subrun, product._event = ids
            try:
                # The images stay in the product after Fill, so the next entry reuses their pixel storage.
                root.ssnet_larcv1.set_image_count(product, len(checked[producer]))
                for index, image in enumerate(checked[producer]):
                    meta = image.meta
                    address = root.ssnet_larcv1.prepare_image(
                        product, index, index, meta.rows, meta.cols,
                        meta.origin_x, meta.origin_y, meta.width, meta.height, meta.plane,
                    )
                    _fill_column_major(address, image.pixels)
                if self._trees[producer].Fill() < 0:
                    raise LArCV1Error("ROOT failed to fill the tree", producer=producer, **where)
            except BaseException:
                product._image_v.clear()
                raise
        self.entries_written += 1

    def annotate(self, name: str, text: str) -> None:
        """Store ``text`` in the file as a ``TNamed`` called ``name`` (its title), written when the file is; a
        second call with the same name replaces the text.  :func:`read_annotation` reads it back."""
        if not _PRODUCER_RE.fullmatch(name) or any(tree_name(p) == name for p in self.producers):
            raise LArCV1Error(f"not a name for an annotation: {name!r}", path=str(self.path))
        self._annotations[name] = text

    def copy_entry(self, entry: LArCV1Entry) -> None:
        """Append an entry as read by :class:`LArCV1Reader` (same ids and images)."""
        self.write_entry(entry.run, entry.subrun, entry.event, entry.products)

    def _commit(self) -> None:
        root = _root()
        assert self._temp is not None  # __exit__ follows a successful __enter__
        try:
            self._file.cd()
            for tree in self._trees.values():
                tree.Write("", root.TObject.kOverwrite)
            for name, text in self._annotations.items():
                root.TNamed(name, text).Write(name, root.TObject.kOverwrite)
            self._file.Close()
            if self._file.TestBit(root.TFile.kWriteError):
                raise LArCV1Error("ROOT failed to write the file", path=str(self.path))
            put_in_place(self._temp, self.path)
        except OSError as exc:
            self._discard()
            raise LArCV1Error(f"cannot put the written file in place: {exc}", path=str(self.path)) from exc
        except BaseException:
            self._discard()
            raise
        logger.debug("wrote %d entries to %s", self.entries_written, self.path)
        self._reset()

    def _discard(self) -> None:
        if self._file is not None and self._file.IsOpen():
            self._file.Close()
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()
        self._reset()

    def _reset(self) -> None:
        self._trees, self._products, self._file, self._temp = {}, {}, None, None
        self._annotations = {}


class _PixelStorage:
    """A float32 array of shape ``(cols, rows)`` at a C++ address, as numpy's array interface describes it."""

    def __init__(self, address: int, rows: int, cols: int) -> None:
        self.__array_interface__ = {
            "version": 3, "shape": (cols, rows), "typestr": np.dtype(np.float32).str, "data": (address, False),
        }


def _fill_column_major(address: int, pixels: npt.NDArray[np.float32]) -> None:
    """Write ``pixels`` (row-major, shape ``(rows, cols)``) column by column into the ``rows * cols`` floats at
    ``address`` (index = col * rows + row).  numpy's strided copy is about as fast as a blocked one here, and
    runs without the GIL."""
    if pixels.size:
        rows, cols = pixels.shape
        np.copyto(np.asarray(_PixelStorage(address, rows, cols)), pixels.T)


def _event_id(name: str, value: int, where: dict[str, Any]) -> int:
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            number = operator.index(value)
            if 0 <= number < INVALID_ID:
                return number
    raise LArCV1Error(f"{name} must be an integer in [0, 2**64 - 1), got {value!r}", **where)


def _checked_image(item: ImageLike, index: int, producer: str, where: dict[str, Any]) -> Image2D:
    try:
        meta, pixels = (item.meta, item.pixels) if isinstance(item, Image2D) else item
        return Image2D(meta, pixels)
    except (TypeError, ValueError) as exc:
        raise LArCV1Error(f"image {index}: {exc}", producer=producer, **where) from exc
