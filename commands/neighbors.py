"""The nearest-neighbor commands: index build, add, merge and verify, knn."""

from __future__ import annotations

import click

from headstart.commands.options import embedding_options, extract_options, runtime, runtime_options
from headstart.search.settings import INDEX_KINDS, NEIGHBORS, TARGET_RECALL

__all__ = ["index", "knn"]


@click.group()
def index() -> None:
    """Nearest-neighbor indexes over embeddings (FAISS)."""


@index.command("build")
@click.argument("sources", nargs=-1)
@embedding_options
@click.option(
    "--from-embeddings",
    "embeddings_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Index the vectors of a .npy or .parquet file instead of embedding SOURCES "
    "(no --model needed).",
)
@click.option(
    "--vector-column",
    default="embedding",
    show_default=True,
    help="The Parquet column holding the vectors.",
)
@click.option(
    "--trained-from",
    metavar="INDEX",
    help="Share the trained quantizer of this IVF index (a part built before), so that "
    "index merge can join the two.",
)
@click.option(
    "--kind",
    type=click.Choice(INDEX_KINDS),
    default=INDEX_KINDS[0],
    show_default=True,
)
@click.option(
    "--max-memory",
    help="Memory budget for the build, e.g. 2G [default: half the available memory]; auto "
    "compresses the vectors to fit (SQ8, else PQ), and a budget too small is refused.",
)
@click.option(
    "--target-recall", type=click.FloatRange(0, 1), default=TARGET_RECALL, show_default=True
)
@click.option(
    "--thumbnails/--no-thumbnails",
    default=True,
    show_default=True,
    help="Keep a 96 px JPEG of each item in the index, for the service's page to show; "
    "--no-thumbnails keeps no image content.",
)
@click.option("-o", "--out", default="index", show_default=True, help="Index directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_build(
    sources,
    embeddings_file,
    vector_column,
    trained_from,
    kind,
    max_memory,
    target_recall,
    thumbnails,
    out,
    quiet,
    **params,
) -> None:
    """Build a FAISS index over the embeddings of SOURCES (or of --from-embeddings FILE)."""
    from headstart.search.from_sources import (
        build_index_from_embeddings,
        build_index_from_sources,
    )
    from headstart.sizes import parse_size

    budget = parse_size(max_memory) if max_memory else None
    if embeddings_file is not None:
        if sources:
            raise click.UsageError("give SOURCES or --from-embeddings, not both")
        built = build_index_from_embeddings(
            embeddings_file,
            out,
            vector_column=vector_column,
            kind=kind,
            max_memory=budget,
            target_recall=target_recall,
            trained_from=trained_from,
        )
        click.echo(
            f"indexed {built.count} vectors: {built.spec.describe()}, recall@10 "
            f"{built.recall:.3f} against exact search ({built.seconds:.1f} s) -> {out}"
        )
        return
    if not sources:
        raise click.UsageError("give SOURCES to embed, or --from-embeddings FILE")
    if not params.get("model"):
        raise click.UsageError("Missing option '-m' / '--model'.")
    embed, cache_dir = extract_options(params)
    built = build_index_from_sources(
        sources,
        embed,
        cache_dir,
        out,
        kind=kind,
        max_memory=budget,
        target_recall=target_recall,
        thumbnails=thumbnails,
        trained_from=trained_from,
        progress=not quiet,
    )
    click.echo(
        f"indexed {built.count} vectors: {built.spec.describe()}, recall@10 "
        f"{built.recall:.3f} against exact search ({built.seconds:.1f} s) -> {out}"
    )
    if built.thumbnails and built.thumbnails.missing:
        click.echo(
            f"{built.thumbnails.missing} items have no thumbnail (unreadable when indexed)",
            err=True,
        )


# --from-embeddings needs no model: --model is checked in the command instead.
next(p for p in index_build.params if p.name == "model").required = False


@index.command("add")
@click.argument("index_dir")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--max-memory",
    help="Memory budget, e.g. 2G [default: half the available memory]; the index is read "
    "into memory to grow it, and a budget that cannot hold it is refused.",
)
@runtime_options
def index_add(
    index_dir, sources, max_memory, cache_dir, device, batch_size, workers, quiet, fields
):
    """Add the images of SOURCES that INDEX_DIR does not hold yet, without a rebuild.

    They are embedded as the index's images were (only what the cache lacks). Killed at any
    moment, the index is left as it was before, or grown.
    """
    from headstart.search.from_sources import add_sources_to_index
    from headstart.sizes import parse_size

    grown = add_sources_to_index(
        index_dir,
        sources,
        cache_dir,
        runtime=runtime(device, batch_size, workers, fields),
        max_memory=parse_size(max_memory) if max_memory else None,
        progress=not quiet,
    )
    click.echo(
        f"added {grown.added} vectors ({grown.known} already indexed) -> {index_dir}: "
        f"{grown.count} in all"
    )


@index.command("merge")
@click.argument("out")
@click.argument("parts", nargs=-1, required=True)
@click.option(
    "--max-memory",
    help="Memory budget, e.g. 2G [default: half the available memory]; the merged index is "
    "built in memory, and a budget that cannot hold it is refused.",
)
def index_merge(out, parts, max_memory) -> None:
    """Merge IVF index PARTS (built with --trained-from one of them) into a new index OUT."""
    from headstart.search.budget import default_budget
    from headstart.search.merge import merge_indexes
    from headstart.sizes import parse_size

    budget = parse_size(max_memory) if max_memory else default_budget()
    merged = merge_indexes(out, parts, max_memory=budget)
    click.echo(f"merged {merged.parts} parts: {merged.count} vectors -> {out}")


@index.command("verify")
@click.argument("index_dir")
def index_verify(index_dir) -> None:
    """Check every byte of INDEX_DIR's files against what index build recorded.

    Loading checks only sizes, modification times and sampled blocks; a copy whose files kept
    their bytes but not their times is accepted here, and its new times recorded.
    """
    from headstart.search.store import verify_index

    moved = verify_index(index_dir)
    for name in moved:
        click.echo(f"{name}: intact; its new modification time is recorded", err=True)
    click.echo(f"{index_dir}: every file matches index.json")


VERIFY_HELP = "First check every byte of the index's files (as `headstart index verify`)."


@click.command()
@click.argument("index_dir")
@click.argument("queries", nargs=-1)
@click.option("-k", "k", type=click.IntRange(min=1), default=NEIGHBORS, show_default=True)
@click.option("--key", "keys", multiple=True, help="A cached content key to query; repeatable.")
@click.option(
    "--text",
    "texts",
    multiple=True,
    help="A text to search for (image-text indexes, open_clip:...); repeatable.",
)
@click.option(
    "--duplicates",
    type=click.FloatRange(-1, 1),
    help="List pairs of indexed items at least this similar instead.",
)
@click.option("--verify", is_flag=True, help=VERIFY_HELP)
@runtime_options
def knn(
    index_dir,
    queries,
    k,
    keys,
    texts,
    duplicates,
    verify,
    cache_dir,
    device,
    batch_size,
    workers,
    quiet,
    fields,
) -> None:
    """Nearest neighbors in INDEX_DIR of QUERIES (images, folders), of --key values or of
    --text queries."""
    from headstart.classify.tables import neighbor_lines
    from headstart.search.query import query_index
    from headstart.search.store import load_index, verify_index
    from headstart.search.text import refuse_text, text_neighbors

    if verify:
        verify_index(index_dir)
    if duplicates is not None:
        loaded = load_index(index_dir)
        pairs = loaded.near_duplicates(duplicates)
        for start in range(0, len(pairs), 1000):  # items read from disk a page at a time
            page = pairs[start : start + 1000]
            items = loaded.items.take([row for i, j, _ in page for row in (i, j)])
            for n, (_, _, similarity) in enumerate(page):
                click.echo(f"{similarity:.4f}\t{items[2 * n].path}\t{items[2 * n + 1].path}")
        click.echo(f"{len(pairs)} pairs with similarity >= {duplicates}", err=True)
        return
    if not (queries or keys or texts):
        raise click.ClickException("give query images, --key values or --text queries")
    loaded = None
    if texts:
        loaded = load_index(index_dir)
        refuse_text(loaded)  # before any image is embedded
    found = []
    if queries or keys:
        loaded, found = query_index(
            index_dir,
            cache_dir,
            sources=queries,
            keys=keys,
            k=k,
            runtime=runtime(device, batch_size, workers, fields),
            progress=not quiet,
        )
    if texts:
        found += text_neighbors(loaded, texts, cache_dir, k=k, device=device)
    for line in neighbor_lines(found):
        click.echo(line)
