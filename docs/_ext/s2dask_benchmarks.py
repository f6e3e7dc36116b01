"""Benchmark tables generated at build time from ``benchmarks/results/*.json``.

Nothing on the benchmarks page is copied by hand: the directive ``s2dask-benchmarks`` reads
every result file, and for each one writes its machine (CPU model, cores, memory, GPUs, as
the file recorded them), its date, the command that produced it (the file's own
``command``) and its figures, with the PNG of the same name when there is one. A file
added to or removed from ``benchmarks/results/`` changes the page on the next build.

Use it inside an ``eval-rst`` block (it writes reStructuredText)::

    .. s2dask-benchmarks::
       :results: ../benchmarks/results

"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

#: what each benchmark measures, in one line (the section's lead)
ABOUT = {
    "forward": "The model's forward pass per engine, precision and batch size, against the matmul "
               "peaks measured in the same processes.",
    "e2e-cli": "The whole ``s2dask classify`` process, start-up included, against the aggregate "
               "forward rate of as many single-thread processes as workers, measured right after.",
    "e2e": "``classify`` end to end (Keras engine) against the forward pass on the same cluster; "
           "peak memory per worker.",
    "baseline": "s2dask against the tutorial's ``model.predict(x, batch_size=100)`` on the same "
                "scene, in the same run.",
    "batch": "Worker utilisation over a batch of 8 scenes of 2048 x 2048, one ``classify`` per "
             "scene against one pipelined call.",
    "startup": "Seconds from the process start to the first chunk of a 4096 x 4096 job.",
    "jp2": "JPEG 2000 decoding: its share of a task, and the job per chunk edge and GDAL threads.",
    "precision_accuracy": "Reduced precision on the Buffalo scene: class agreement with float32 "
                          "and test accuracy, per engine and precision.",
    "memory": "Peak memory of a prediction task per chunk pixel, a worker's baseline per engine, "
              "and a 4096 x 4096 job under 1.5 GiB workers.",
    "chaos": "A batch on S3 with faults injected (503s) while workers are killed, against the "
             "same batch undisturbed.",
    "scaling": "The same job at 1 and 2 workers and threads, and per chunk size.",
    "gpu_tile": "The whole ``s2dask classify`` process on a full 10980 x 10980 tile on a GPU, "
                "a fresh worker's start-up, exactness against the CPU, the GPU's matmul peaks.",
    "stac_loading": "The scene graph of a STAC item: s2dask's reader against odc-stac.",
    "maps_buffalo": "Smoothing and accuracy assessment on the Buffalo subset.",
    "spatial": "A fully-convolutional model (6 x 64-channel 3 x 3 convolutions, halo 6): one chunk's "
               "forward pass against the matmul peaks, the whole ``s2dask classify`` against that "
               "forward rate, and the halo's read and compute overhead.",
}

#: the order of sections on the page; benchmarks not listed follow alphabetically
ORDER = ["forward", "e2e-cli", "baseline", "batch", "startup", "jp2", "precision_accuracy",
         "spatial", "gpu_tile", "memory", "chaos", "e2e", "scaling", "stac_loading", "maps_buffalo"]

#: per benchmark: which parts of a result file hold its figures (dotted roots) and, for lists
#: of runs, which leaves of each run to show; anything else in the file is context
FIGURES: dict[str, dict[str, Any]] = {
    "baseline": {"roots": ["summary", "cli.wall_s", "cli.mpx_s", "cli.vs_naive_100"]},
    "batch": {"roots": ["runs", "summary"], "leaves": {"wall_s", "utilisation", "mpx_s",
                                                     "utilisation_sequential",
                                                     "utilisation_pipelined", "speedup"}},
    "chaos": {"roots": ["result"], "skip": {"per_scene"}},
    "e2e": {"roots": ["runs", "summary"],
            "leaves": {"wall_s", "end_to_end", "forward_mpx_s_same_cluster", "n_tasks",
                       "e2e_vs_forward_min", "rss_peak_gib_max", "rss_peak_spread"}},
    "e2e-cli": {"roots": ["runs", "repeats"],
                "leaves": {"wall_s", "mpx_s", "cli_vs_forward", "aggregate_mpx_s",
                           "reference_mpx_s", "model_mpx_s_aggregate", "cli_vs_in_job_model"}},
    "forward": {"roots": ["best", "startup"],
                "leaves": {"engine", "precision", "batch_size", "mpx_s", "vs_fp32_peak",
                           "vs_bf16_peak", "total_s", "convert_compile_s", "tensorflow_imported"}},
    "gpu_tile": {"roots": ["runs", "forward", "check", "peaks_flop_s", "summary"],
                 "skip": {"engine", "cluster", "job_engines"},
                 "leaves": {"wall_s", "mpx_s", "forward_mpx_s", "block_outputs_mpx_s", "batch_size",
                            "job_equals_in_process", "agreement_gpu_vs_cpu", "fp32", "tf32", "bf16",
                            "best_forward_mpx_s", "best_forward_gflop_s", "best_cli_mpx_s",
                            "pixels_differing_gpu_vs_cpu", "pixels_differing_job_vs_in_process"}},
    "jp2": {"roots": ["profile", "profile_cog_reference", "jobs"],
            "leaves": {"read_mpx_s", "forward_mpx_s", "decode_share", "wall_s", "end_to_end"}},
    "maps_buffalo": {"roots": ["pixel_accuracy", "overall_accuracy", "overall_accuracy_ci95",
                               "classes"],
                     "leaves": {"plain", "smooth3", "smooth5", "overall_accuracy",
                                "overall_accuracy_ci95", "mapped_ha", "estimated_ha",
                                "estimated_ha_ci95", "users_accuracy", "producers_accuracy"}},
    "memory": {"roots": ["runs", "engine_baseline", "limit_check"],
               "leaves": {"bytes_per_chunk_pixel", "peak_gib", "baseline_gib", "rss_gib",
                          "tensorflow_imported", "status", "wall_s", "chunks", "worker_peak_gib",
                          "workers_replaced"}},
    "precision_accuracy": {"roots": ["results"],
                           "leaves": {"agreement_with_fp32", "pixels_differing", "test_oa",
                                      "test_oa_minus_fp32", "meets_bar"}},
    "scaling": {"roots": ["runs"], "leaves": {"end_to_end", "predict", "speedup_vs_1w1t_tf1"}},
    "stac_loading": {"roots": ["odc_stac", "s2dask_reader"],
                     "leaves": {"tasks", "tasks_per_output_chunk", "graph_pickle_bytes",
                                "separate_reads_per_chunk", "bytes_gathered_per_chunk",
                                "build_seconds", "seconds", "traced_peak_mib"}},
    "spatial": {"roots": ["forward", "cli.wall_s", "cli.mpx_s", "cli.precision", "cli.vs_forward", "halo"],
                "leaves": {"engine", "precision", "mpx_s", "gflop_s", "vs_fp32_peak", "vs_bf16_peak",
                           "agreement_with_openvino_fp32", "read_overhead", "extra_pixels"}},
    "startup": {"roots": ["runs"], "leaves": {"first_chunk", "wall_s", "scenes_checked",
                                              "cluster_up", "model_delivered"}},
}

#: keys that label a run in a list of runs, first found wins
RUN_LABELS = ("label", "mode", "layout", "size", "edge", "engine", "name")


def load_results(folder: Path) -> list[tuple[Path, dict]]:
    """Every result file of ``folder``, sorted by benchmark then name."""
    out = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            out.append((path, data))

    def key(item: tuple[Path, dict]) -> tuple:
        name = item[1].get("benchmark") or item[0].stem
        return (ORDER.index(name) if name in ORDER else len(ORDER), name, item[0].name)

    return sorted(out, key=key)


def machine_of(data: dict) -> dict | None:
    """The machine a file recorded (a file of repeats: its first repeat's)."""
    if isinstance(data.get("machine"), dict):
        return data["machine"]
    for rep in data.get("repeats") or []:
        if isinstance(rep, dict) and isinstance(rep.get("machine"), dict):
            return rep["machine"]
    return None


def describe_machine(m: dict | None) -> str:
    if not m:
        return "not recorded in the file"
    parts = [str(m.get("cpu") or "unknown CPU")]
    cores = m.get("cores_usable") or m.get("cores_logical")
    if cores:
        parts.append(f"{cores} cores")
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']} GiB")
    gpus = m.get("gpus") or []
    parts.append(", ".join(gpus) if gpus else "no GPU")
    if m.get("cpu_flags"):
        flags = set(m["cpu_flags"])
        parts.append("AMX" if "amx_bf16" in flags else
                     "AVX512_BF16, no AMX" if "avx512_bf16" in flags else "no bf16 matrix units")
    return ", ".join(parts)


def commands_of(data: dict) -> list[str]:
    """The command(s) that produced a file, as it recorded them."""
    if data.get("command"):
        return [str(data["command"])]
    return [str(r["command"]) for r in data.get("repeats") or [] if isinstance(r, dict) and r.get("command")]


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _label(item: Any, i: int) -> str:
    if isinstance(item, dict):
        for k in RUN_LABELS:
            if k in item and isinstance(item[k], (str, int, float)):
                return f"{k} {item[k]}"
    return f"#{i + 1}"


def flatten(obj: Any, prefix: str, spec: dict) -> Iterator[tuple[str, Any]]:
    """(dotted name, scalar) leaves of ``obj``, filtered by the benchmark's spec."""
    leaves, skip = spec.get("leaves"), spec.get("skip", set())
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in skip:
                continue
            yield from flatten(v, f"{prefix} / {k}" if prefix else str(k), spec)
    elif isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            for i, item in enumerate(obj):
                yield from flatten(item, f"{prefix} [{_label(item, i)}]", spec)
        elif len(obj) <= 6 and all(isinstance(x, (int, float, str)) for x in obj):
            name = prefix.rsplit(" / ", 1)[-1]
            if leaves is None or name in leaves:
                yield prefix, obj
    else:
        name = prefix.rsplit(" / ", 1)[-1]
        if leaves is None or name in leaves:
            yield prefix, obj


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        a = abs(v)
        if a >= 1e6:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    if v is None:
        return "-"
    return str(v)


def figures(name: str, data: dict) -> list[tuple[str, str]]:
    spec = FIGURES.get(name, {"roots": ["summary"]})
    rows: list[tuple[str, str]] = []
    for root in spec["roots"]:
        value = _get(data, root)
        if value is None:
            continue
        if not isinstance(value, (dict, list)):
            rows.append((root, fmt(value)))
            continue
        rows.extend((k, fmt(v)) for k, v in flatten(value, root, spec))
    return rows


def tables(rows: list[tuple[str, str]]) -> list[str]:
    """Figures as tables: runs that share their figures' names become one row each of a wide
    table (columns = the figures); the rest is a two-column ``figure | value`` table."""
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    for key, value in rows:
        if "] / " in key:  # a run of a list: one row per run
            prefix, _, leaf = key.partition("] / ")
            prefix += "]"
        else:
            prefix, _, leaf = key.rpartition(" / ")
        if groups and groups[-1][0] == prefix:
            groups[-1][1].append((leaf, value))
        else:
            groups.append((prefix, [(leaf, value)]))
    wide: dict[tuple[str, ...], list[tuple[str, list[str]]]] = {}
    narrow: list[tuple[str, str]] = []
    for prefix, items in groups:
        leaves = tuple(k for k, _ in items)
        if len(items) >= 2 and prefix:
            wide.setdefault(leaves, []).append((prefix, [v for _, v in items]))
        else:
            narrow += [(f"{prefix} / {k}" if prefix else k, v) for k, v in items]
    out: list[str] = []
    for leaves, table_rows in wide.items():
        if len(table_rows) == 1:  # a lone group reads better as figure | value
            prefix, values = table_rows[0]
            narrow += [(f"{prefix} / {k}", v) for k, v in zip(leaves, values)]
            continue
        out += [".. list-table::", "   :header-rows: 1", ""]
        out += ["   * - "] + [f"     - {_cell(k)}" for k in leaves]
        for prefix, values in table_rows:
            out += [f"   * - {_cell(prefix)}"] + [f"     - {_cell(v)}" for v in values]
        out += [""]
    if narrow:
        out += [".. list-table::", "   :header-rows: 1", "   :widths: 70 30", "",
                "   * - figure", "     - value"]
        for k, v in narrow:
            out += [f"   * - {_cell(k)}", f"     - {_cell(v)}"]
        out += [""]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("`", "'")


def render(folder: Path, doc_dir: Path) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """Per benchmark, per result file: the reStructuredText body of the file's section."""
    out: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for path, data in load_results(folder):
        name = data.get("benchmark") or path.stem
        if not out or out[-1][0] != name:
            out.append((name, []))
        lines = [f"- **Machine**: {_cell(describe_machine(machine_of(data)))}"]
        created = data.get("created") or (data.get("repeats") or [{}])[0].get("created")
        lines += [f"- **Date**: {created or 'not recorded'}"]
        if data.get("note"):
            lines += [f"- **Note**: {_cell(str(data['note']))}"]
        lines += ["- **Command**:", ""]
        cmds = commands_of(data) or ["not recorded in the file"]
        lines += ["  .. code-block:: text", ""] + [f"     {c}" for c in cmds] + [""]
        lines += tables(figures(name, data))
        png = path.with_suffix(".png")
        if png.exists():
            rel = os.path.relpath(png, doc_dir).replace(os.sep, "/")
            lines += [f".. image:: {rel}", f"   :alt: {png.name}", ""]
        out[-1][1].append((path.name, lines))
    return out


class BenchmarksDirective(SphinxDirective):
    """``.. s2dask-benchmarks::`` with ``:results: DIR`` relative to the document."""

    has_content = False
    option_spec = {"results": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        doc_dir = Path(self.env.doc2path(self.env.docname)).parent
        folder = (doc_dir / self.options.get("results", "../benchmarks/results")).resolve()
        if not folder.is_dir():
            raise self.error(f"no benchmark results folder {folder}")
        for path in folder.glob("*.json"):
            self.env.note_dependency(str(path))
        for path in folder.glob("*.png"):
            self.env.note_dependency(str(path))
        sections: list[nodes.Node] = []
        for name, files in render(folder, doc_dir):
            section = self._section(name, "benchmark-" + name)
            if name in ABOUT:
                self._parse([ABOUT[name], ""], section)
            for file_name, body in files:
                sub = self._section(file_name, "result-" + file_name)
                self._parse(body, sub)
                section += sub
            sections.append(section)
        return sections

    def _section(self, title: str, ident: str) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(ident)], names=[nodes.fully_normalize_name(title)])
        section += nodes.title(title, title)
        return section

    def _parse(self, lines: list[str], node: nodes.Element) -> None:
        self.state.nested_parse(StringList(lines, source=self.env.docname), self.content_offset, node)


def setup(app):
    app.add_directive("s2dask-benchmarks", BenchmarksDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
