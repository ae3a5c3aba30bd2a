"""`rods validate`, `rods convert`, `rods schema`: commands on record files and their schemas."""

from __future__ import annotations

import typer

from rodscli import console, records, schemas
from rodscli.cli import Globals, app, out_file, provenance
from rodscli.errors import RodsError


@app.command()
def validate(
    file: str = typer.Argument(..., help="Record file (.jsonl, .parquet, or - for JSONL on stdin)."),
    schema: str = typer.Option(None, "--schema", "-s", help="Schema name; default: the one recorded in the file's provenance, else the one its first record fits."),
    max_errors: int = typer.Option(50, "--max-errors", help="Print at most this many problems (all are counted)."),
) -> None:
    """Check every record of FILE against its schema; print each problem as file:line: field: problem."""
    name = schema or records.detect_schema(file)
    if name is None and file != "-":
        name = records.guess_schema(next(records.iter_raw(file), (0, None))[1])
    if name is None:
        raise RodsError("cannot tell the record type: pass --schema NAME", where=file)
    schemas.load(name)
    bad_records: set[str] = set()
    count = 0
    for where, field, message in records.find_problems(file, name):
        count += 1
        bad_records.add(where)
        if count <= max_errors:
            typer.echo(f"{where}: {field}: {message}")
    if count:
        console.console.print(f"[red]{len(bad_records)} bad record(s), {count} problem(s)[/red] in {file} (schema {name})")
        raise typer.Exit(2)
    console.info(f"[green]ok[/green] {file} (schema {name})")


@app.command()
def convert(
    src: str = typer.Argument(..., metavar="IN", help="Input records (.jsonl, .parquet, or - for JSONL on stdin)."),
    dst: str = typer.Argument(..., metavar="OUT", callback=out_file, help="Output records (.jsonl, .parquet, or - for JSONL on stdout)."),
    schema: str = typer.Option(None, "--schema", "-s", help="Record type; default: the one recorded in IN's provenance, else the one its first record fits."),
) -> None:
    """Convert records between JSONL and Parquet, validating them; OUT gets fresh provenance."""
    name, recs = records.open_records(src, schema, validate=Globals.validate)
    if name is None:
        raise RodsError("cannot tell the record type: pass --schema NAME", where=src)
    info = provenance([src], parent=records.read_provenance(src))
    n = records.write_records(dst, recs, name, provenance_info=info, validate=Globals.validate)
    console.info(f"wrote {n} {name} record(s) to {dst}")


@app.command()
def schema(name: str = typer.Argument(..., help="One of: task, rollout, scored, group, buffer, metrics, ...")) -> None:
    """Print the JSON Schema NAME (with x-extends resolved)."""
    import orjson

    typer.echo(orjson.dumps(schemas.load(name), option=orjson.OPT_INDENT_2).decode())
