"""tal-index: look after a gallery index folder (erasure, retention, compaction, statistics).

Works on any index folder `tal-infer --index` wrote, without the model: the fingerprint and
feature shapes come from the index itself. Erasure rewrites the feature files without the
removed entries (`GalleryIndex.remove`; docs/scale.md "Gallery lifecycle").
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .cli_common import friendly_errors
from .errors import TalError
from .index import GalleryIndex, RemovalReport, entry_time
from .index.catalog import CAMERAS_AS_NAMED
from .lifecycle import EntryFilter, parse_duration, parse_time

EPILOG = """\b
Examples:
  tal-index info gallery.idx
  tal-index remove gallery.idx --where label=17                 # one person, every camera
  tal-index remove gallery.idx --where camera=3 --before 2026-11-01 --delete-files
  tal-index remove gallery.idx --path cams/c3/0017_c3s1_000451_00.jpg
  tal-index retain gallery.idx --max-age 30d --delete-files
"""
_INDEX = click.argument("index_dir", metavar="INDEX", type=click.Path(path_type=Path))
_DELETE = click.option(
    "--delete-files", is_flag=True,
    help="Also delete the crop files of the removed entries (otherwise the next sync of the "
         "gallery folder adds them again).")
_DRY_RUN = click.option("--dry-run", is_flag=True,
                        help="List what would be removed; change nothing.")


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Maintain a gallery index folder: erase entries (a person's crops, a camera, a time
    span) so their features are gone from the index files, keep a retention window, compact,
    and show what it holds."""


@main.command(epilog=EPILOG)
@_INDEX
@friendly_errors
def info(index_dir: Path) -> None:
    """Entries, cameras, time span and bytes of an index."""
    index = GalleryIndex.open(index_dir)
    contents = index.load()
    records = contents.records
    feature_bytes = index.feature_bytes()
    click.echo(f"index {index_dir}: {len(records)} entries, model {index.fingerprint}")
    click.echo(f"features: {', '.join(f'{k} {list(v)}' for k, v in index.store.shapes.items())}")
    per_entry = sum(index.store.row_bytes.values())
    click.echo(f"feature files: {feature_bytes:,} bytes ({per_entry:,} per entry; "
               f"{_dead_rows(contents)} dead rows)")
    if records:
        cameras = sorted({r.camera for r in records if r.camera is not None})
        times = [entry_time(r) for r in records]
        note = ("" if index.info().camera_numbering == CAMERAS_AS_NAMED else
                " (numbered from 0 by an earlier version, c1 = 0; the next tal-infer --index "
                "sync numbers them as the file names do)")
        click.echo(f"cameras: {', '.join(map(str, cameras)) or 'unknown'}{note}")
        click.echo(f"entry times: {_when(min(times))} .. {_when(max(times))}")


@main.command(epilog=EPILOG)
@_INDEX
@click.option("--path", "paths", multiple=True, type=click.Path(path_type=Path),
              help="An entry's crop file (its id in the index); repeatable.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Metadata condition (camera, as the file names number it: c3 is 3; label; "
                   "or an extra key); repeatable, all must hold; an unknown key is an error. "
                   "VALUE is read as JSON where it parses (3, true, \"x\"), else as text.")
@click.option("--before", metavar="TIME",
              help="Entry time (timestamp, else file time) before TIME: seconds since the "
                   "epoch or an ISO 8601 date/time (UTC unless it says).")
@_DELETE
@_DRY_RUN
@friendly_errors
def remove(index_dir: Path, paths: tuple[Path, ...], where: tuple[str, ...], before: str | None,
           delete_files: bool, dry_run: bool) -> None:
    """Erase entries by crop path, or by metadata and time: their catalog rows and feature rows
    leave the index files (rewritten), in one crash-safe step."""
    if paths and (where or before):
        raise TalError("give either --path or --where/--before, not both")
    index = GalleryIndex.open(index_dir)
    if paths:
        wanted = {os.path.abspath(p) for p in paths}
        chosen = [path for path in index.load().paths if path in wanted]
        asked = " ".join(f"--path {p}" for p in paths)
    else:
        chosen = [rec.path for rec in index.select(EntryFilter.parse(where, before))]
        asked = " ".join([*(f"--where {w}" for w in where),
                          *([f"--before {before}"] if before is not None else [])])
    _erase(index, chosen, asked, delete_files, dry_run)


@main.command(epilog=EPILOG)
@_INDEX
@click.option("--max-age", required=True, metavar="DURATION",
              help="Keep entries seen within this long (90s, 15m, 12h, 30d, 2w).")
@click.option("--now", metavar="TIME", help="Reference time instead of the clock.")
@_DELETE
@_DRY_RUN
@friendly_errors
def retain(index_dir: Path, max_age: str, now: str | None, delete_files: bool,
           dry_run: bool) -> None:
    """Retention window: erase entries whose time (timestamp, else file time) is older than
    --max-age."""
    cutoff = (time.time() if now is None else parse_time(now)) - parse_duration(max_age)
    index = GalleryIndex.open(index_dir)
    chosen = [rec.path for rec in index.select(EntryFilter(before=cutoff))]
    _erase(index, chosen, f"--max-age {max_age}", delete_files, dry_run)


@main.command(epilog=EPILOG)
@_INDEX
@friendly_errors
def compact(index_dir: Path) -> None:
    """Rewrite the feature files without dead rows (space of replaced or vanished crops)."""
    index = GalleryIndex.open(index_dir)
    before = index.feature_bytes()
    index.compact()
    click.echo(f"compacted {index_dir}: feature files {before:,} -> {index.feature_bytes():,} "
               "bytes")


def _erase(index: GalleryIndex, chosen: list[str], asked: str, delete_files: bool,
           dry_run: bool) -> None:
    """Erase the entries ``chosen`` (paths) by the options ``asked``: crop files first (when
    asked), then the index, so a run killed in between leaves entries that the same command,
    run again, still selects."""
    if not chosen:
        click.echo(f"no entry matches {asked}; nothing removed")
        return
    if dry_run:
        for path in chosen:
            click.echo(path)
        click.echo(f"would remove {len(chosen)} entries (dry run; nothing changed)")
        return
    if delete_files:
        for path in chosen:
            Path(path).unlink(missing_ok=True)
    report = index.remove(chosen)
    _print_report(index, report, delete_files)


def _print_report(index: GalleryIndex, report: RemovalReport, deleted: bool) -> None:
    click.echo(f"removed {len(report.removed)} entries ({report.kept} left); feature files "
               f"{report.bytes_before:,} -> {report.bytes_after:,} bytes")
    left = [p for p in report.removed if os.path.exists(p)]
    if left and not deleted:
        click.echo(f"note: {len(left)} removed entries' crop files still exist; the next sync "
                   "of their gallery folder adds them again (use --delete-files to erase the "
                   "crops too)", err=True)


def _dead_rows(contents) -> int:
    stored = len(next(iter(contents.features.values()))) if contents.features else 0
    return stored - len(contents)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


@main.command(epilog="""\b
Examples:
  tal-index build galleries/city --bundle export/demo --images cams/ --shards 4 --workers 2
  tal-index build galleries/city --bundle export/demo --list new-crops.txt   # add more
  tal-index build galleries/city --bundle export/demo --images cams/ --address ray://head:10001
""")
@click.argument("gallery", type=click.Path(path_type=Path))
@click.option("--bundle", required=True, type=click.Path(path_type=Path),
              help="The exported model (every Ray node reads it at this path).")
@click.option("--images", "folders", multiple=True, type=click.Path(path_type=Path),
              help="A folder of crops (searched recursively); repeatable.")
@click.option("--list", "lists", multiple=True, type=click.Path(path_type=Path),
              help="A text file naming one crop file per line; repeatable.")
@click.option("--shards", type=int, default=None,
              help="Number of shards of a new gallery (an existing one keeps its own).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Extraction workers (one extractor each, loaded once).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True,
              help="GPUs each worker reserves (0: CPU workers).")
@click.option("--address", default=None,
              help="Ray cluster to join (ray://head:10001); default RAY_ADDRESS, else a local "
                   "Ray on this machine.")
@friendly_errors
def build(gallery: Path, bundle: Path, folders: tuple[Path, ...], lists: tuple[Path, ...],
          shards: int | None, workers: int, batch_size: int, gpus_per_worker: float,
          address: str | None) -> None:
    """Bulk-index crop files into a sharded gallery on Ray (Ray Data workers extract, one
    actor per shard writes its index folder). Rerunning it extracts only what is missing, so
    a killed build resumes."""
    from .cluster.bulk import build as bulk_build
    from .cluster.sharded import ShardedGallery
    from .images import list_images
    from .user_files import read_regular

    paths = [str(p) for folder in folders for p in list_images(folder)]
    for listing in lists:
        text = read_regular(listing, 2**30).decode("utf-8", "replace")
        paths += [line.strip() for line in text.splitlines() if line.strip()]
    if not paths:
        raise TalError("nothing to index: give --images FOLDER or --list FILE")
    sharded = ShardedGallery(gallery, bundle, shards, address=address)
    report = bulk_build(sharded, paths, workers=workers, batch_size=batch_size,
                        gpus_per_worker=gpus_per_worker)
    click.echo(f"{gallery}: {report.extracted} crops extracted in {report.seconds:.1f} s "
               f"({report.crops_per_s:.1f} crops/s), {report.present} already indexed, "
               f"{len(report.skipped)} skipped; {sum(sharded.check().values())} entries in "
               f"{sharded.count} shards")
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
