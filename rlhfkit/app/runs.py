"""The playground, the KL explorer and the run dashboard: pages over a directory of runs (`label serve --runs-dir`).

    route                          what
    GET  /playground               the playground page (static; data from the API below)
    GET  /explorer                 the KL explorer page
    GET  /dashboard                the run dashboard page
    GET  /api/runs/index           checkpoints (config.json + model.safetensors), runs (metrics.jsonl), finished
                                   demos (summary.json) and evaluations (`rlhfkit eval --output-dir`: eval.json +
                                   eval/) under the runs directory, as the user may see them
    GET  /api/runs/metrics         ?run=REL&offset=N: metrics.jsonl rows from byte N on (whole lines only), the
                                   new offset, and the run's alarms: the dashboard polls it while a run trains
    GET  /api/runs/explorer        ?demo=REL&start=S&count=K: a demo's or an evaluation's policies (gold, proxy, KL,
                                   length, KL coefficient, alarms), and K held-out prompts with each one's response
    POST /api/play/generate        {prompt, checkpoints: [ids], max_new_tokens, temperature, seed}: NDJSON, one
                                   line per checkpoint as it answers (rlhfkit.app.playground)

Who: admins. Annotators only where the operator marked paths public (`--runs-public demo,other/sft`); everything
else is 403 for them, and with nothing public every route here is. A path is relative to the runs directory:
absolute paths, `..`, backslashes and symlinks that lead outside are refused (400) before anything is read. An
evaluation names its policies' run directories itself: those are read only when they lie under the runs directory
and the user may see them (a shared evaluation does not share the runs it evaluated).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from rlhfkit.app.playground import Busy, Playground

STATIC = Path(__file__).parent / "static"
MAX_DEPTH = 4  # directory levels searched below the runs directory
MAX_ENTRIES = 500  # of each kind in the index
METRICS_CHUNK = 1 << 20  # bytes of metrics.jsonl per poll
SKIP_DIRS = {"checkpoints", "__pycache__", "node_modules"}
PPO_NAME = re.compile(r"^ppo_beta_([0-9.eE+-]+)$")
BON_NAME = re.compile(r"^bon_([0-9]+)$")
POLICY_NAME = re.compile(r"^(?!\.)[A-Za-z0-9_.-]{1,100}$")


class PlayIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000)
    checkpoints: list[str] = Field(min_length=1, max_length=12)
    max_new_tokens: int = Field(default=48, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


def http(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail)


class RunsRoot:
    """The runs directory: path confinement, what each role may see, and the index of what is there."""

    def __init__(self, root: str | os.PathLike, public: tuple[str, ...] = ()):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"--runs-dir {root}: not a directory")
        cleaned = []
        for p in public:
            try:
                cleaned.append(self.clean(p))
            except HTTPException as e:
                raise ValueError(f"--runs-public {p!r}: {e.detail}") from None
        self.public = tuple(cleaned)

    # -- paths ---------------------------------------------------------------------------------------------------
    @staticmethod
    def clean(rel: str) -> str:
        """`rel` as a normalised relative path ("." is the runs directory itself); anything that could leave the
        directory or is not a plain relative path is a 400."""
        if not isinstance(rel, str) or not rel or len(rel) > 400 or "\x00" in rel or "\\" in rel:
            raise http(400, "path: a relative path under the runs directory")
        if rel == ".":
            return "."
        parts = rel.strip("/").split("/") if not rel.startswith("/") else None
        if parts is None or any(p in ("", ".", "..") for p in parts):
            raise http(400, "path: no absolute paths, no '.' or '..' parts")
        return "/".join(parts)

    def resolve(self, rel: str) -> Path:
        """The directory `rel` names, checked to lie inside the runs directory after symlinks are followed."""
        rel = self.clean(rel)
        path = (self.root / rel).resolve()
        if path != self.root and self.root not in path.parents:
            raise http(400, "path leads outside the runs directory")
        if not path.exists():
            raise http(404, f"{rel}: not found under the runs directory")
        return path

    def rel(self, path: Path) -> str:
        r = path.relative_to(self.root).as_posix()
        return r if r else "."

    # -- access --------------------------------------------------------------------------------------------------
    def may_use(self, role: str) -> bool:
        return role == "admin" or bool(self.public)

    def may_see(self, role: str, rel: str) -> bool:
        if role == "admin":
            return True
        return any(p == "." or rel == p or rel.startswith(p + "/") for p in self.public)

    def check(self, role: str, rel: str) -> Path:
        """The directory, or 400/403/404. Access is decided on the cleaned name before the disk is touched."""
        name = self.clean(rel)
        if not self.may_see(role, name):
            raise http(403, f"{name}: admin only, not shared with annotators")
        return self.resolve(name)

    # -- index ---------------------------------------------------------------------------------------------------
    def scan(self) -> dict[str, list[dict]]:
        """Checkpoints, runs and demos below the root (MAX_DEPTH levels, symlinks not followed, training
        checkpoints/ skipped), plus a best-of-n entry per demo with an SFT policy and a reward model."""
        out: dict[str, list[dict]] = {"checkpoints": [], "runs": [], "demos": [], "evals": []}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            d = Path(dirpath)
            depth = len(d.relative_to(self.root).parts)
            subdirs = set(dirnames)
            dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS and not n.startswith(".")
                                 and depth < MAX_DEPTH)
            files = set(filenames)
            rel = self.rel(d)
            if "config.json" in files and ({"model.safetensors", "adapter_config.json"} & files):
                kind = _model_kind(d)
                out["checkpoints"].append({"id": rel, "kind": kind, "reward": None})
            if "metrics.jsonl" in files:
                out["runs"].append({"id": rel, "bytes": (d / "metrics.jsonl").stat().st_size,
                                    "mtime": (d / "metrics.jsonl").stat().st_mtime})
            if "summary.json" in files:
                out["demos"].append({"id": rel})
            elif "eval.json" in files and "eval" in subdirs:  # the loop's round_k/eval.json is one policy's, no eval/
                out["evals"].append({"id": rel})
        rewards = {c["id"] for c in out["checkpoints"] if c["kind"] == "reward"}
        for c in out["checkpoints"]:
            if c["kind"] == "policy":
                c["reward"] = _nearest_reward(c["id"], rewards)
        policies = {c["id"] for c in out["checkpoints"] if c["kind"] == "policy"}
        for demo in list(out["demos"]):
            sft, rm = _join(demo["id"], "sft"), _join(demo["id"], "rm")
            if sft in policies and rm in rewards:
                for n in _bon_ns(self.root / demo["id"]):
                    out["checkpoints"].append({"id": _join(demo["id"], f"bon_{n}"), "kind": "bon", "n": n,
                                               "base": sft, "reward": rm})
        return {k: v[:MAX_ENTRIES] for k, v in out.items()}

    def index(self, role: str) -> dict[str, list[dict]]:
        found = self.scan()
        return {k: [e for e in v if self.may_see(role, e["id"]) and self.may_see(role, e.get("base") or e["id"])]
                for k, v in found.items()}

    def inside(self, path: Path) -> Path | None:
        """`path` after symlinks, if it still lies under the runs directory; else None."""
        try:
            p = path.resolve()
        except (OSError, RuntimeError):
            return None
        return p if p != self.root and self.root in p.parents else None

    def run_dir(self, res: dict, role: str) -> Path | None:
        """The run directory of an evaluated policy, from the paths eval recorded: `source_dir` (absolute) as it
        is, then both it and `source` (as given to eval, relative to wherever eval ran) by their trailing parts
        below the runs directory (runs/ppo_a -> ppo_a), since the server knows neither eval's working directory
        nor whether the runs moved. The first that lies under the runs directory after symlinks, holds a run's
        files (config.yaml, metrics.jsonl or rlhfkit.json) and the user may see; None otherwise."""
        tries: list[Path] = []
        for key in ("source_dir", "source"):
            s = res.get(key)
            if not isinstance(s, str) or not s or len(s) > 1000 or "\x00" in s:
                continue
            p = Path(s)
            if p.is_absolute():
                tries.append(p)
            parts = [x for x in p.parts[-8:] if x not in ("/", ".", "")]
            if ".." not in parts:
                tries += [self.root.joinpath(*parts[i:]) for i in range(len(parts))]
        for t in tries:
            p = self.inside(t)
            if p is None or not p.is_dir() or not self.may_see(role, self.rel(p)):
                continue
            if any((p / f).is_file() for f in ("config.yaml", "metrics.jsonl", "rlhfkit.json")):
                return p
        return None


def _join(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


def _model_kind(d: Path) -> str:
    try:
        arch = json.loads((d / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        arch = []
    return "reward" if any("SequenceClassification" in str(a) for a in arch) else "policy"


def _nearest_reward(rel: str, rewards: set[str]) -> str | None:
    """The reward model a policy's proxy score comes from: an `rm` beside it or beside one of its parents (the
    demo's layout: demo/ppo_beta_0.1/best -> demo/rm)."""
    parts = rel.split("/") if rel != "." else []
    for i in range(len(parts) - 1, -1, -1):
        cand = "/".join(parts[:i] + ["rm"])
        if cand in rewards:
            return cand
    return None


def _bon_ns(demo: Path) -> list[int]:
    try:
        ns = json.loads((demo / "summary.json").read_text()).get("config", {}).get("bon_n")
        return sorted({int(n) for n in ns if 1 < int(n) <= 32}) or [4]
    except (OSError, ValueError, TypeError, AttributeError):
        return [4, 16]


# -- metrics -----------------------------------------------------------------------------------------------------
def read_metrics(path: Path, offset: int, max_bytes: int = METRICS_CHUNK) -> dict[str, Any]:
    """Rows of metrics.jsonl from byte `offset` on, whole lines only: a line still being written is left for the
    next poll. A file shorter than `offset` (a rerun replaced it) is read from the start again (`reset`)."""
    size = path.stat().st_size if path.exists() else 0
    reset = offset > size
    if reset:
        offset = 0
    rows: list[dict] = []
    end = offset
    if size > offset:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = offset + cut + 1
            for line in chunk[: cut + 1].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append({str(k): v for k, v in row.items() if _number(v)})
    return {"offset": end, "size": size, "reset": reset, "rows": rows, "more": end < size}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def read_alarms(run: Path) -> list[dict]:
    path = run / "alarms.jsonl"
    out = []
    if path.is_file() and path.stat().st_size < METRICS_CHUNK:
        for line in path.read_text(errors="replace").splitlines():
            try:
                a = json.loads(line)
            except ValueError:
                continue
            if isinstance(a, dict):
                out.append({"kind": str(a.get("kind", "")), "step": a.get("step"),
                            "message": str(a.get("message", a.get("detail", "")))[:500]})
    return out


def read_monitor(run: Path) -> list[dict]:
    """The over-optimisation monitor's probes of a run (monitor.jsonl): step, KL to the start, gold, proxy and
    length on held-out prompts during training, i.e. the run's own gold-against-KL curve (Gao et al. 2022)."""
    path = run / "monitor.jsonl"
    out = []
    if path.is_file() and path.stat().st_size < 16 * METRICS_CHUNK:
        for line in path.read_text(errors="replace").splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict):
                out.append({k: _num(m.get(k)) for k in ("step", "kl", "gold", "proxy", "length")})
    return out


# -- the KL explorer ---------------------------------------------------------------------------------------------
_EVAL_CACHE: dict[tuple, list] = {}


def _eval_samples(path: Path) -> list[dict]:
    """eval/<policy>.json's samples, parsed once per version of the file."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _EVAL_CACHE:
        if len(_EVAL_CACHE) > 64:
            _EVAL_CACHE.clear()
        data = json.loads(path.read_text())
        rows = data.get("samples") if isinstance(data, dict) else None
        _EVAL_CACHE[key] = rows if isinstance(rows, list) else []
    return _EVAL_CACHE[key]


def _policy_kind(name: str) -> tuple[str, float | None]:
    m = PPO_NAME.match(name)
    if m:
        try:
            return "ppo", float(m[1])
        except ValueError:
            pass
    m = BON_NAME.match(name)
    if m:
        return "bon", float(m[1])
    return ("dpo" if name.startswith("dpo") else name), None


def _num(v: Any) -> float | None:
    return float(v) if _number(v) else None


def explorer(demo: Path, start: int, count: int) -> dict[str, Any]:
    """A finished demo as the explorer shows it: a point per policy (gold, proxy, KL to SFT, length, alarms), the
    PPO runs ordered by KL coefficient, and `count` held-out prompts from `start` with every evaluated policy's
    response, gold, proxy, per-sample KL (log pi - log pi_sft of that response) and length."""
    try:
        summary = json.loads((demo / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise http(422, f"summary.json unreadable: {type(e).__name__}") from None
    if not isinstance(summary, dict):
        raise http(422, "summary.json is not a JSON object")
    policies = summary.get("policies") if isinstance(summary.get("policies"), dict) else {}
    alarms: dict[str, list[dict]] = {}
    for a in summary.get("alarms") if isinstance(summary.get("alarms"), list) else []:
        if isinstance(a, dict):
            alarms.setdefault(str(a.get("policy")), []).append({"kind": str(a.get("kind", "")), "step": a.get("step")})
    points = []
    for name, p in policies.items():
        if not isinstance(p, dict) or not POLICY_NAME.match(name):  # a name is also a path below the demo
            continue
        kind, x = _policy_kind(name)
        run_alarms = alarms.get(name) or [{"kind": a["kind"], "step": a["step"]} for a in read_alarms(demo / name)]
        points.append({"name": name, "kind": kind, "beta": x if kind == "ppo" else None,
                       "beta_from": "name" if kind == "ppo" else None, "n": int(x) if kind == "bon" else None,
                       "kl": _num(p.get("kl_to_sft")), "gold": _num(p.get("gold")), "proxy": _num(p.get("proxy")),
                       "length": _num(p.get("mean_length")), "alarms": run_alarms,
                       "components": {k: _num(v) for k, v in _dict(p.get("gold_components")).items()}})
    files = {pt["name"]: demo / "eval" / f"{pt['name']}.json" for pt in points}
    evaluated, samples, total = _page({n: _reader(f) for n, f in files.items() if f.is_file()}, start, count)
    ppo = sorted((pt for pt in points if pt["beta"] is not None), key=lambda pt: pt["beta"])
    trajectories = {pt["name"]: read_monitor(demo / pt["name"]) for pt in ppo}
    return _explorer_out(points, ppo, evaluated, samples, total, trajectories, "sft", "SFT", start,
                         summary.get("seed"))


def explorer_eval(runs: RunsRoot, d: Path, role: str, start: int, count: int) -> dict[str, Any]:
    """An evaluation (`rlhfkit eval --output-dir`: eval.json, eval/<policy>.json) in `explorer`'s shape. A policy's
    KL coefficient is its run's (config.yaml's `kl_coef`: what it trained with, the starting value under adaptive
    KL), else one in a demo-style name (ppo_beta_0.1); its trainer, alarms and training probes are its run's too
    (RunsRoot.run_dir: only a run under the runs directory that the user may see). Samples: eval/<policy>.json
    (all of them), else the few eval.json keeps."""
    try:
        data = json.loads((d / "eval.json").read_text())
    except (OSError, ValueError) as e:
        raise http(422, f"eval.json unreadable: {type(e).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("policies"), dict):
        raise http(422, "eval.json has no `policies` object (not written by rlhfkit eval)")
    cfg = _dict(data.get("config"))
    points, sources, infos = [], {}, {}
    for name, p in data["policies"].items():
        if not isinstance(p, dict) or not POLICY_NAME.match(name):  # a name is also a file name below eval/
            continue
        run = runs.run_dir(p, role)
        info = infos[name] = _run_info(runs, run) if run is not None else {}
        kind, x = _policy_kind(name)
        beta = info.get("beta", x if kind == "ppo" else None)
        points.append({"name": name, "kind": info.get("kind", kind), "beta": beta,
                       "beta_from": "config" if "beta" in info else ("name" if beta is not None else None),
                       "n": int(x) if kind == "bon" else None, "kl": _num(p.get("kl_to_ref", p.get("kl_to_sft"))),
                       "gold": _num(p.get("gold")), "proxy": _num(p.get("proxy")),
                       "length": _num(p.get("mean_length")),
                       "alarms": [{"kind": a["kind"], "step": a["step"]} for a in info.get("alarms", [])],
                       "components": {k: _num(v) for k, v in _dict(p.get("gold_components")).items()},
                       "run": runs.rel(run) if run is not None else None})
        f = d / "eval" / f"{name}.json"
        if f.is_file() and runs.inside(f) is not None:
            sources[name] = _reader(f)
        elif isinstance(p.get("samples"), list):
            sources[name] = lambda rows=p["samples"]: rows
    evaluated, samples, total = _page(sources, start, count)
    names = [pt["name"] for pt in points]
    reference = cfg.get("reference") if cfg.get("reference") in names else (
        "sft" if "sft" in names else next((pt["name"] for pt in points if pt["beta"] is None), None))
    kl_ref = next((n for n, p in data["policies"].items() if cfg.get("ref_model") and isinstance(p, dict)
                   and p.get("source") == cfg.get("ref_model")), "the reference model")
    ppo = sorted((pt for pt in points if pt["beta"] is not None), key=lambda pt: pt["beta"])
    trajectories = {pt["name"]: infos[pt["name"]].get("trajectory", []) for pt in ppo}
    return _explorer_out(points, ppo, evaluated, samples, total, trajectories, reference, kl_ref, start,
                         cfg.get("seed"))


def _explorer_out(points, ppo, evaluated, samples, total, trajectories, reference, kl_ref, start, seed) -> dict:
    ref = samples.get(reference) or next(iter(samples.values()), [])
    return {"points": points, "ppo": [pt["name"] for pt in ppo], "evaluated": evaluated, "samples": samples,
            "trajectories": trajectories, "reference": reference, "kl_ref": kl_ref,
            "prompts": [s["prompt"] for s in ref], "start": start, "total_prompts": total,
            "seed": seed if _number(seed) else None}


def _reader(path: Path) -> Callable[[], list]:
    return lambda: _eval_samples(path)


def _page(sources: dict[str, Callable[[], list]], start: int, count: int) -> tuple[list[str], dict, int]:
    """Samples start..start+count of each policy whose samples can be read: (those policies, samples, most rows)."""
    evaluated, samples, total = [], {}, 0
    for name, rows_of in sources.items():
        try:
            rows = [r for r in rows_of() if isinstance(r, dict)]
        except (OSError, ValueError):  # a file being written, or not JSON: that policy has no samples to show
            continue
        evaluated.append(name)
        total = max(total, len(rows))
        samples[name] = [_sample(s) for s in rows[start : start + count]]
    return evaluated, samples, total


def _run_info(runs: RunsRoot, run: Path) -> dict[str, Any]:
    """What a run directory says of itself: its KL coefficient (config.yaml's `kl_coef`), its trainer
    (rlhfkit.json's `stage`), its alarms and its monitor's probes. A file whose symlink leads out is not read."""
    def text(name: str) -> str:
        p = runs.inside(run / name)
        return p.read_text(errors="replace") if p and p.is_file() and p.stat().st_size < METRICS_CHUNK else ""

    out: dict[str, Any] = {}
    try:
        cfg = yaml.safe_load(text("config.yaml"))
    except yaml.YAMLError:
        cfg = None
    if isinstance(cfg, dict) and _number(cfg.get("kl_coef")):
        out["beta"] = float(cfg["kl_coef"])
    try:
        stage = _dict(json.loads(text("rlhfkit.json") or "{}")).get("stage")
    except ValueError:
        stage = None
    if isinstance(stage, str) and re.fullmatch(r"[a-z0-9_+-]{1,32}", stage):
        out["kind"] = stage
    out["alarms"] = read_alarms(run) if runs.inside(run / "alarms.jsonl") else []
    out["trajectory"] = read_monitor(run) if runs.inside(run / "monitor.jsonl") else []
    return out


def _sample(s: dict) -> dict:
    scores = _dict(s.get("scores"))
    lp, lr = _num(s.get("logp")), _num(s.get("ref_logp"))
    return {"prompt": str(s.get("prompt", "")), "response": str(s.get("response", "")), "kind": s.get("kind"),
            "gold": _num(scores.get("gold")), "proxy": _num(scores.get("proxy")), "length": _num(s.get("length")),
            "kl": None if lp is None or lr is None else lp - lr,
            "components": {str(k): _num(v) for k, v in _dict(s.get("gold_components")).items()}}


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


# -- routes ------------------------------------------------------------------------------------------------------
def add_routes(app: FastAPI, runs: RunsRoot | None, playground: Playground, current_user: Callable) -> None:
    """The three pages and their API on `app`; `current_user` is the app's session dependency (CSRF included)."""

    for page in ("playground", "explorer", "dashboard"):
        def serve(page=page):
            return FileResponse(STATIC / f"{page}.html", media_type="text/html")

        app.add_api_route(f"/{page}", serve, methods=["GET"], include_in_schema=False)

    def root_for(user) -> RunsRoot:
        if runs is None:
            raise http(404, "no runs directory: start the server with --runs-dir DIR")
        if not runs.may_use(user.role):
            raise http(403, "admin only")
        return runs

    @app.get("/api/runs/index")
    def runs_index(user=Depends(current_user)):
        r = root_for(user)
        return {"role": user.role, **r.index(user.role), "max_new_tokens": playground.max_new_tokens,
                "timeout_s": playground.timeout_s}

    @app.get("/api/runs/metrics")
    def runs_metrics(run: str = Query(..., max_length=400), offset: int = Query(0, ge=0, le=2**62),
                     user=Depends(current_user)):
        d = root_for(user).check(user.role, run)
        if not (d / "metrics.jsonl").is_file():
            raise http(404, f"{run}: no metrics.jsonl")
        return {"run": run, **read_metrics(d / "metrics.jsonl", offset), "alarms": read_alarms(d)}

    @app.get("/api/runs/explorer")
    def runs_explorer(demo: str = Query(..., max_length=400), start: int = Query(0, ge=0, le=10**7),
                      count: int = Query(8, ge=1, le=50), user=Depends(current_user)):
        r = root_for(user)
        d = r.check(user.role, demo)
        if (d / "summary.json").is_file():
            return {"demo": demo, "source": "demo", **explorer(d, start, count)}
        if (d / "eval.json").is_file():
            return {"demo": demo, "source": "eval", **explorer_eval(r, d, user.role, start, count)}
        raise http(404, f"{demo}: neither a finished demo (summary.json) nor an evaluation (eval.json)")

    @app.post("/api/play/generate")
    async def play_generate(body: PlayIn, user=Depends(current_user)):
        r = root_for(user)
        for name in body.checkpoints:
            r.clean(name)  # 400 for a path that is not plain, before anything else
        known = {c["id"]: c for c in r.index(user.role)["checkpoints"]}
        specs = []
        for name in dict.fromkeys(body.checkpoints):
            if name not in known:
                r.check(user.role, name)  # 403 not shared, 400 leads outside (a symlink), 404 not there
                raise http(404, f"{name}: not a checkpoint under the runs directory")
            c = known[name]
            if c["kind"] == "reward":
                raise http(422, f"{name}: a reward model, not a policy")
            path = r.root / (c.get("base") or c["id"])
            specs.append({"id": name, "path": str(path), "n": c.get("n") or 1,
                          "reward": str(r.root / c["reward"]) if c.get("reward") else None})
        try:
            slot = playground.acquire()
        except Busy:
            raise HTTPException(429, "the playground is busy, retry shortly", headers={"Retry-After": "2"}) from None
        req = playground.request(body.prompt, specs, body.max_new_tokens, body.temperature, body.seed)
        return StreamingResponse(playground.stream(req, slot), media_type="application/x-ndjson",
                                 headers={"X-Accel-Buffering": "no"})
