"""How data looks on a terminal: the tables behind ``--format table`` (rich)."""

from __future__ import annotations

import json
from typing import Any


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def kv_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in data.items():
        t.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
    return t


def manifest_table(m: dict[str, Any]) -> None:
    status_style = {"SUCCEEDED": "green", "STOPPED_BUDGET": "yellow"}.get(m["status"], "red")
    rows = {
        "job": f"{m['job_id']} ([{status_style}]{m['status']}[/{status_style}])",
        "model / engine": f"{m['model']} / {m['engine']}",
        "accelerator": f"{m['accelerator_count']} x {m['accelerator_type']} at "
        f"${m['usd_per_accelerator_hour']}/h ({m['pricing_model']}, table {m['price_table_date']})",
        "records": f"{m['records_in']} in = {m['results']} results + {m['errors']} errors",
        "errors by code": ", ".join(f"{k}: {v}" for k, v in m["errors_by_code"].items()) or "-",
        "tokens": f"{m['prompt_tokens']} prompt ({m['cached_tokens']} cached) + "
        f"{m['completion_tokens']} completion",
        "throughput": f"{m['output_tokens_per_second']:.1f} output tok/s, "
        f"{m['total_tokens_per_second']:.1f} total tok/s",
        "time": f"{m['wall_seconds']:.1f} s wall, {m['accelerator_seconds']:.1f} s accelerator "
        f"({m['accelerator_busy_seconds']:.1f} s busy)",
        "cost": f"${m['cost_usd']:.6f} total · ${m['usd_per_1k_tokens']:.6f}/1k tokens "
        f"(input ${m['usd_per_1k_input_tokens']:.6f}, output ${m['usd_per_1k_output_tokens']:.6f})",
        "efficiency": f"{m['padding_waste_percent']:.1f}% padding waste, "
        f"{m['engine_compilations']} compilations",
    }
    if m.get("max_cost_usd") is not None:
        rows["budget"] = f"max_cost_usd ${m['max_cost_usd']}" + (
            f": stopped, {m['records_left']} records left" if m.get("records_left") else ""
        )
    if m.get("task") == "embedding":
        wall = m.get("total_wall_seconds") or m["wall_seconds"]
        rows["tokens"] = f"{m['prompt_tokens']} read → {m.get('embeddings', 0)} vectors"
        rows["throughput"] = f"{m['total_tokens_per_second']:.1f} tok/s, " + (
            f"{m.get('embeddings', 0) / wall:.1f} vectors/s" if wall else "-"
        )
        rows["cost"] = (
            f"${m['cost_usd']:.6f} total · ${m.get('usd_per_1m_tokens', 0.0):.6f}/1M tokens"
        )
        if (m.get("outputs") or {}).get("vectors"):
            rows["vectors"] = m["outputs"]["vectors"]
    if m.get("task") == "image":
        rows["tokens"] = f"{m.get('images', 0)} images"
        rows["throughput"] = (
            f"{m.get('images_per_second', 0.0):.3f} images/s, "
            f"{m.get('seconds_per_image', 0.0):.2f} accelerator s/image"
        )
        rows["cost"] = (
            f"${m['cost_usd']:.6f} total · ${m.get('usd_per_1k_images', 0.0):.4f}/1k images"
        )
        rows["efficiency"] = (
            f"{m['padding_waste_percent']:.1f}% idle image-steps, "
            f"{m['engine_compilations']} compilations"
        )
        if (m.get("outputs") or {}).get("images"):
            rows["images"] = m["outputs"]["images"]
    console().print(kv_table(rows))


_STATE_STYLE = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
    "STOPPED_BUDGET": "yellow",
}


def styled(state: str) -> str:
    style = _STATE_STYLE.get(state, "white")
    return f"[{style}]{state}[/{style}]"


def row(doc: dict[str, Any]) -> dict[str, Any]:
    """One line of `jobs list`."""
    m, p = doc.get("manifest") or {}, doc.get("progress") or {}
    return {
        "job_id": doc["job_id"],
        "state": doc["state"],
        "created_at": doc["created_at"],
        "runner": doc.get("runner"),
        "submitted_by": doc.get("submitted_by"),
        "via": (doc.get("submission") or {}).get("via"),
        "records": m.get("records_in", p.get("records")),
        "errors": m.get("errors", p.get("errors")),
        "cost_usd": m.get("cost_usd"),
    }


def jobs_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in (
        "JOB ID",
        "STATE",
        "CREATED",
        "RUNNER",
        "VIA",
        "SUBMITTED BY",
        "RECORDS",
        "ERRORS",
        "COST $",
    ):
        t.add_column(col, no_wrap=True)
    for r in rows:
        cost = f"{r['cost_usd']:.6f}" if r["cost_usd"] is not None else "-"
        t.add_row(
            r["job_id"],
            styled(r["state"]),
            r["created_at"],
            r["runner"] or "-",
            r["via"] or "-",
            r["submitted_by"] or "-",
            dash(r["records"]),
            dash(r["errors"]),
            cost,
        )
    out = console()
    if not out.is_terminal:  # piped: one job per line, whole ids, however long
        out.width = max(out.width, 240)
    out.print(t if rows else "no jobs")


def dash(v: Any) -> str:
    return "-" if v is None else str(v)


def status_table(doc: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "job": f"{doc['job_id']} ({styled(doc['state'])})",
        "job folder": doc["job_dir"],
        "submitted": f"{doc['created_at']} by {doc.get('submitted_by') or '-'} via "
        f"{(doc.get('submission') or {}).get('via', '-')}",
        "runner": doc.get("runner") or "- (recorded only)",
    }
    launch = doc.get("launch") or {}
    if launch.get("pid"):
        rows["process"] = f"pid {launch['pid']} on {launch.get('host')} (log {launch.get('log')})"
    if launch.get("dataflow_job_id"):
        rows["dataflow job"] = f"{launch['dataflow_job_id']} {launch.get('console_url', '')}"
    if doc.get("started_at"):
        rows["started"] = doc["started_at"]
    if doc.get("finished_at"):
        rows["finished"] = doc["finished_at"]
    p = doc.get("progress")
    if p and doc["state"] == "RUNNING":
        rows["progress"] = (
            f"{p.get('records', 0)}/{p.get('records_planned', '?')} records, "
            f"{p.get('errors', 0)} errors, {p.get('shards', 0)} shards "
            f"(heartbeat {doc.get('heartbeat_at')})"
        )
    m = doc.get("manifest")
    if m:
        rows["records"] = f"{m['records_in']} in = {m['results']} results + {m['errors']} errors"
        rows["cost"] = f"${m['cost_usd']:.6f} (${m['usd_per_1k_tokens']:.6f}/1k tokens)"
        rows["manifest"] = m["manifest"]
    if doc.get("error"):
        rows["error"] = f"[red]{doc['error']}[/red]"
    if "stopped" in doc:
        rows["stopped"] = doc["stopped"]
    console().print(kv_table(rows))


def plan_table(d: dict[str, Any]) -> None:
    out = console()
    out.print(
        f"[bold]dry run[/bold]: would record job [bold]{d['job_id']}[/bold] in "
        f"{d['root']} and launch it with the {d['runner']} runner"
    )
    plan = d["launch"]
    rows = {k: v for k, v in plan.items() if k not in ("pipeline_options", "flex_template_request")}
    out.print(kv_table(rows))
    if "pipeline_options" in plan:
        out.print("[bold]pipeline options[/bold]")
        for flag in plan["pipeline_options"]:
            out.print(f"  {flag}")
        out.print("[bold]Flex Template launch request[/bold]")
        out.print(json.dumps(plan["flex_template_request"], indent=2))


def results_table(d: dict[str, Any]) -> None:
    rows = {
        "job": f"{d['job_id']} ({styled(d['state'])})",
        "results": f"{d['results']} ({len(d['result_files'])} committed files)",
        "errors": f"{d['errors']} ({len(d['error_files'])} files)",
        "manifest": d["manifest"] or "- (not written yet)",
    }
    if d.get("summary"):
        s = d["summary"]
        rows["records"] = f"{s['records_in']} in = {s['results']} results + {s['errors']} errors"
    console().print(kv_table(rows))


def engines_table(rows: list[dict[str, Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("ENGINE", "INSTALLED", "TASKS", "WHAT", "INSTALL WITH"):
        t.add_column(col)
    for r in rows:
        installed = "[green]yes[/green]" if r["installed"] else "[red]no[/red]"
        tasks = ", ".join(r.get("tasks", []))
        t.add_row(r["engine"], installed, tasks, escape(r["description"]), escape(r["install"]))
    out = console()
    out.print(t)
    for r in rows:
        if r["options"]:
            names = ", ".join(o["name"] for o in r["options"])
            out.print(f"[bold]{r['engine']}[/bold] engine_options: {names}")
        for task, options in (r.get("task_options") or {}).items():
            if options and options != r["options"]:
                names = ", ".join(o["name"] for o in options)
                out.print(f"[bold]{r['engine']}[/bold] engine_options for {task}: {names}")
