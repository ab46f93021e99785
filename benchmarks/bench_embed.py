"""Embedding builder benchmark (issue 5): raw forward vs end-to-end, local vs Ray, memory.

In one run, for each modality:
  * raw forward throughput (spectra/s) of the default ``small`` model and of the
    ``specclip``-size model (random weights: speed does not depend on them), same threads,
    measured two ways on in-memory arrays: the network alone on prepared tensors
    (``net``: encoder + heads), and ``SpecModel.embed_numpy`` (``+prep``: the shared
    preprocessing, then the network);
  * end-to-end builder throughput (read Parquet -> preprocess -> encode -> heads -> write
    Parquet) and its ratio to both raw figures (goal >= 0.8); the specclip-size model runs
    end to end on a small sub-catalog (it does ~13 LAMOST spectra/s here);
  * the Ray engine vs the local engine on the same catalog (same process settings);
  * the same end to end on a copy of the catalog whose flux/ivar pages are
    BYTE_STREAM_SPLIT-encoded (a writer option: same schema, cheaper to decode), the CPU
    cost of a spectrum in each (load-robust ratios on a shared machine), and the decode
    cost alone (read + arrays, no model) for both layouts;
  * peak resident memory of ``specsearch embed`` on a catalog 10x larger than the batch
    buffer vs one batch-sized catalog (bounded memory: the two should be close).

The catalog is read once before timing (page cache warm: the timings are CPU-bound, as a
catalog on a fast local disk is; ``--cold`` drops the page cache first, as root).

Usage:
  python benchmarks/bench_embed.py                       # 20k-star synthetic catalog
  python benchmarks/bench_embed.py --catalog CATALOG --skip-ray --device cuda
Writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from specsearch.embed import EmbedConfig, build_embeddings
from specsearch.embed.process import configure_process
from specsearch.fsutil import write_json_atomic
from specsearch.io.catalog import CatalogWriter, list_column_to_numpy, open_catalog
from specsearch.model import load_model
from specsearch.preprocess import default_batch_size, grid_for, prepare_model_input_torch

RESULTS = Path(__file__).resolve().parent / "results"


def random_model(name: str, workdir: Path, device: str):
    """A model of architecture ``name`` with random weights, through the public save/load."""
    from specsearch.model.checkpoint import save_model_dir
    from specsearch.model.config import model_config
    from specsearch.model.network import SpecCLIPNet

    default = load_model()
    cfg = model_config(name).with_data(label_names=list(default.label_names),
                                       class_names=list(default.class_names))
    path = workdir / f"random-{name}"
    if not (path / "config.json").is_file():
        save_model_dir(path, SpecCLIPNet(cfg), cfg)
    return load_model(path, device=device)


def sample_spectra(catalog: Path, modality: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    cat = open_catalog(catalog)
    fl, iv, got = [], [], 0
    for b in cat.iter_batches(modality, ["flux", "ivar"], batch_size=min(n, 8192)):
        fl.append(list_column_to_numpy(b.column("flux")))
        iv.append(list_column_to_numpy(b.column("ivar")))
        got += b.num_rows
        if got >= n:
            break
    return np.concatenate(fl)[:n], np.concatenate(iv)[:n]


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_per_call: int, model, min_seconds: float) -> float:
    """Calls per second x n_per_call, after one warm-up call."""
    return rate_and_cpu(fn, n_per_call, model, min_seconds)[0]


def rate_and_cpu(fn, n_per_call: int, model, min_seconds: float) -> tuple[float, float]:
    """(items per second, process CPU seconds per item: all threads), after a warm-up.

    On a machine shared with other jobs the wall-clock rate follows their load; the CPU
    time an item costs moves much less, so ratios of CPU costs are the steadier ones."""
    fn()
    _sync(model)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < min_seconds:
        fn()
        done += n_per_call
    _sync(model)
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done


def raw_rates(model, modality: str, flux: np.ndarray, ivar: np.ndarray, batch: int,
              min_seconds: float) -> tuple[float, float, float]:
    """(network alone on prepared tensors, embed_numpy incl. preprocessing) spectra/s, and
    the CPU seconds a spectrum costs in embed_numpy."""
    batch = min(batch, flux.shape[0])
    f, iv = flux[:batch], ivar[:batch]
    dev = model.device
    mi = prepare_model_input_torch(torch.from_numpy(f.copy()).to(dev),
                                   torch.from_numpy(iv.copy()).to(dev), modality)

    @torch.inference_mode()
    def net():
        with model._autocast(None):
            out = model.forward_outputs(modality, mi.flux, mi.weight)
            model.net.labels_physical(modality, out.label_mu, out.label_log_sigma)

    r_net = rate(net, batch, model, min_seconds)
    r_prep, cpu_prep = rate_and_cpu(lambda: model.embed_numpy(modality, f, iv,
                                                              batch_size=batch),
                                    batch, model, min_seconds)
    return r_net, r_prep, cpu_prep


def sub_catalog(catalog: Path, out: Path, modality: str, n: int) -> Path:
    """The first ``n`` rows of one modality as a catalog of its own (one file)."""
    if (out / modality).is_dir():
        return out
    table = next(iter(pq.ParquetFile(open_catalog(catalog).files(modality)[0])
                      .iter_batches(batch_size=n)))
    with CatalogWriter(out, modality, rows_per_file=n) as w:
        w.write(table)
    return out


def warm(catalog: Path, modality: str) -> None:
    for p in open_catalog(catalog).files(modality):
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def e2e(catalog: Path, model, out: Path, modality: str, **kw) -> float:
    return e2e_and_cpu(catalog, model, out, modality, **kw)[0]


def e2e_and_cpu(catalog: Path, model, out: Path, modality: str, **kw) -> tuple[float, float]:
    """(end-to-end spectra/s, process CPU seconds per spectrum: reader, model, writer)."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = time.process_time()
    rep = build_embeddings(catalog, model, out, EmbedConfig(modalities=[modality],
                                                            progress=False, **kw))
    if rep.rows_written == 0:
        raise RuntimeError(f"nothing embedded: {rep.summary()}")
    return rep.spectra_per_s, (time.process_time() - cpu) / rep.rows_in


def peak_rss_of_embed(catalog: Path, out: Path, batch_size: int, modality: str,
                      threads: int) -> float:
    """Peak RSS (MB) of a ``specsearch embed`` child process.

    Read from the child's own VmHWM: ``getrusage`` would report the parent's RSS at fork
    (Linux carries ru_maxrss across fork and exec).
    """
    code = ("import sys\nfrom specsearch.cli import main\n"
            "rc=main(sys.argv[1:])\n"
            "hwm=[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "print('PEAK_KB', hwm[0])\n")
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", code, "embed", "--catalog", str(catalog),
                          "--out", str(out), "--batch-size", str(batch_size),
                          "--modality", modality, "--no-progress", "--device", "cpu",
                          "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    kb = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PEAK_KB")]
    return int(kb[-1]) / 1024.0


SPECTRUM_LEAVES = ["flux.list.element", "ivar.list.element"]


def byte_stream_split_copy(catalog: Path, out: Path, modality: str) -> Path:
    """A copy of one modality of ``catalog`` whose flux/ivar pages are BYTE_STREAM_SPLIT
    encoded, zstd, no dictionary (the same Arrow schema and row groups: a writer option,
    not a format change), for the decode-cost comparison."""
    if (out / modality).is_dir():
        return out
    (out / modality).mkdir(parents=True)
    shutil.copy(catalog / "catalog.json", out / "catalog.json")
    for path in open_catalog(catalog).files(modality):
        pf = pq.ParquetFile(path)
        table = pf.read()
        names = [f.name for f in table.schema if f.name not in ("flux", "ivar")]
        pq.write_table(table, out / modality / path.name, compression="zstd",
                       use_dictionary=names, use_byte_stream_split=SPECTRUM_LEAVES,
                       row_group_size=pf.metadata.row_group(0).num_rows)
    return out


def decode_cpu_us(catalog: Path, modality: str, repeats: int = 3) -> float:
    """Process CPU us a spectrum to read a modality's files as the builder does (Parquet
    batches of the output's columns -> (n, npix) arrays), no model; best of ``repeats``."""
    from specsearch.embed.spectra import metadata_fields, read_columns, spectra_arrays
    from specsearch.io.parquet import iter_file_batches

    files = open_catalog(catalog).files(modality)
    columns = read_columns(files[0], metadata_fields(files))
    npix, batch = grid_for(modality).npix, default_batch_size(modality)
    best = float("inf")
    for _ in range(repeats):
        cpu, rows = time.process_time(), 0
        for path in files:
            for b in iter_file_batches(path, columns=columns, batch_size=batch):
                rows += spectra_arrays(b, npix).batch.num_rows
        best = min(best, (time.process_time() - cpu) / rows)
    return 1e6 * best


def make_catalog(n: int, out: Path, seed: int, rows_per_file: int) -> Path:
    subprocess.run([sys.executable, "-m", "specsearch", "synth", "--n", str(n), "--seed",
                    str(seed), "--out", str(out), "--shard-size", str(rows_per_file),
                    "--no-progress"], check=True)
    return out


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="stars in the benchmark catalog")
    ap.add_argument("--catalog", type=Path, default=None,
                    help="use this catalog instead of generating one")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--seconds", type=float, default=3.0, help="per raw measurement")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-specclip", action="store_true",
                    help="skip the specclip-size model (minutes on a busy machine)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache (root)")
    ap.add_argument("--workdir", type=Path, default=None)
    return ap.parse_args()


def _cache_state(catalog: Path, modality: str, cold: bool) -> None:
    if cold:
        subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=True)
    else:
        warm(catalog, modality)


def measure(modality: str, catalog: Path, small, specclip, work: Path,
            args: argparse.Namespace) -> dict:
    """One modality's row: raw rates, end to end (catalog as written and with
    BYTE_STREAM_SPLIT spectra pages), the specclip-size model end to end, Ray."""
    gpu = small.device.type == "cuda"
    bs = default_batch_size(modality, gpu=gpu)
    flux, ivar = sample_spectra(catalog, modality, bs)
    net_small, prep_small, cpu_prep = raw_rates(small, modality, flux, ivar, bs, args.seconds)
    n_big = 64 if modality == "lamost" else 1024
    _cache_state(catalog, modality, args.cold)
    e2e_small, cpu_e2e = e2e_and_cpu(catalog, small, work / f"emb-local-{modality}", modality)
    bss = byte_stream_split_copy(catalog, work / "catalog-bss", modality)
    _cache_state(bss, modality, args.cold)
    e2e_bss, cpu_bss = e2e_and_cpu(bss, small, work / f"emb-bss-{modality}", modality)
    decode = decode_cpu_us(catalog, modality)
    decode_bss = decode_cpu_us(bss, modality)
    net_big = prep_big = e2e_big = float("nan")
    if not args.skip_specclip:
        net_big, prep_big, _ = raw_rates(specclip, modality, flux, ivar, n_big, args.seconds)
        big_cat = sub_catalog(catalog, work / f"sub-{modality}", modality,
                              256 if modality == "lamost" else 8192)
        e2e_big = e2e(big_cat, specclip, work / f"emb-specclip-{modality}", modality,
                      batch_size=n_big)
    row = {"modality": modality, "npix": grid_for(modality).npix, "batch_size": bs,
           "rows": open_catalog(catalog).count(modality),
           "net_small_per_s": net_small, "prep_small_per_s": prep_small,
           "net_specclip_per_s": net_big, "prep_specclip_per_s": prep_big,
           "small_over_specclip": prep_small / prep_big,
           "e2e_local_per_s": e2e_small,
           "e2e_over_prep": e2e_small / prep_small, "e2e_over_net": e2e_small / net_small,
           "e2e_bss_per_s": e2e_bss, "e2e_bss_over_prep": e2e_bss / prep_small,
           "decode_cpu_us": decode, "decode_bss_cpu_us": decode_bss,
           "cpu_us_prep": 1e6 * cpu_prep, "cpu_us_e2e": 1e6 * cpu_e2e,
           "cpu_us_e2e_bss": 1e6 * cpu_bss,
           "e2e_over_prep_cpu": cpu_prep / cpu_e2e, "e2e_bss_over_prep_cpu": cpu_prep / cpu_bss,
           "e2e_specclip_per_s": e2e_big, "e2e_specclip_over_prep": e2e_big / prep_big}
    if not args.skip_ray:
        from specsearch.embed.ray_engine import build_embeddings_ray

        out = work / f"emb-ray-{modality}"
        shutil.rmtree(out, ignore_errors=True)
        rrep = build_embeddings_ray(catalog, None, out,
                                    EmbedConfig(modalities=[modality], progress=False),
                                    num_cpus=args.threads, device=args.device,
                                    num_gpus=1.0 if gpu else 0.0)
        row["e2e_ray_per_s"] = rrep.spectra_per_s
        row["ray_startup_s"] = rrep.startup_seconds
        row["e2e_ray_steady_per_s"] = rrep.steady_spectra_per_s
        row["ray_over_local"] = rrep.spectra_per_s / e2e_small
        row["ray_steady_over_local"] = rrep.steady_spectra_per_s / e2e_small
    return row


def memory_row(catalog: Path, work: Path, threads: int) -> dict:
    """Peak RSS of `specsearch embed` on the whole catalog vs a one-batch catalog."""
    bs, modality = 256, "lamost"
    one = sub_catalog(catalog, work / "sub-memory", modality, bs)
    return {"batch_size": bs, "modality": modality,
            "catalog_rows": open_catalog(catalog).count(modality),
            "peak_rss_mb_full_catalog": peak_rss_of_embed(
                catalog, work / "mem-full", bs, modality, threads),
            "peak_rss_mb_one_batch_catalog": peak_rss_of_embed(
                one, work / "mem-one", bs, modality, threads)}


def _print(rows: list[dict], memory: dict, dev: str, threads: int, ray: bool) -> None:
    print(f"\nEmbedding builder benchmark  ({dev}, {threads} threads, "
          f"torch {torch.__version__}, spectra/s)")
    head = (f"{'modality':8} {'net':>9} {'net+prep':>9} {'specclip':>9} {'small/big':>9} "
            f"{'e2e':>8} {'e2e/prep':>8} {'e2e/net':>8} {'big e2e':>8} {'big e2e/prep':>12} "
            f"{'ray':>8} {'ray/local':>9} {'ray*':>8} {'ray*/local':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['modality']:8} {r['net_small_per_s']:9,.0f} {r['prep_small_per_s']:9,.0f} "
              f"{r['prep_specclip_per_s']:9,.1f} {r['small_over_specclip']:9.0f} "
              f"{r['e2e_local_per_s']:8,.0f} {r['e2e_over_prep']:8.2f} "
              f"{r['e2e_over_net']:8.2f} {r['e2e_specclip_per_s']:8,.1f} "
              f"{r['e2e_specclip_over_prep']:12.2f} "
              f"{r.get('e2e_ray_per_s', float('nan')):8,.0f} "
              f"{r.get('ray_over_local', float('nan')):9.2f} "
              f"{r.get('e2e_ray_steady_per_s', float('nan')):8,.0f} "
              f"{r.get('ray_steady_over_local', float('nan')):10.2f}")
    print("\nCPU us a spectrum (all threads): embed_numpy | end to end, catalog as written "
          "| end to end, BYTE_STREAM_SPLIT flux/ivar pages; e2e/prep by CPU cost")
    for r in rows:
        print(f"{r['modality']:8} {r['cpu_us_prep']:8.1f} | {r['cpu_us_e2e']:8.1f} "
              f"({r['e2e_over_prep_cpu']:.2f}) | {r['cpu_us_e2e_bss']:8.1f} "
              f"({r['e2e_bss_over_prep_cpu']:.2f}); BSS wall {r['e2e_bss_per_s']:,.0f}/s "
              f"({r['e2e_bss_over_prep']:.2f} of net+prep)")
        print(f"{'':8} decode only (read + arrays, no model): {r['decode_cpu_us']:.1f} us as "
              f"written, {r['decode_bss_cpu_us']:.1f} us with BYTE_STREAM_SPLIT")
    if ray:
        print("ray*: without the Ray instance's start-up")
    if memory:
        print(f"\npeak RSS of `specsearch embed --batch-size {memory['batch_size']}` "
              f"({memory['modality']}): {memory['peak_rss_mb_full_catalog']:.0f} MB on "
              f"{memory['catalog_rows']} rows "
              f"({memory['catalog_rows'] / memory['batch_size']:.0f}x the batch), "
              f"{memory['peak_rss_mb_one_batch_catalog']:.0f} MB on one batch")


def main() -> int:
    args = _parse()
    configure_process(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-embed-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog = args.catalog or work / "catalog"
    if not (catalog / "catalog.json").is_file():
        print(f"generating a {args.n}-star synthetic catalog in {catalog} ...", flush=True)
        make_catalog(args.n, catalog, seed=1, rows_per_file=max(args.n // 4, 1000))
    small = load_model(device=args.device)
    specclip = None if args.skip_specclip else random_model("specclip", work, args.device)
    gpu = small.device.type == "cuda"
    rows = []
    for modality in ("lamost", "xp"):
        rows.append(measure(modality, catalog, small, specclip, work, args))
        print(json.dumps(rows[-1]), flush=True)
    memory = memory_row(catalog, work, args.threads) if not (args.skip_memory or gpu) else {}
    dev = torch.cuda.get_device_name() if gpu else (platform.processor() or platform.machine())
    _print(rows, memory, dev, args.threads, not args.skip_ray)
    RESULTS.mkdir(exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
              "device": dev, "cpus": os.cpu_count(), "threads": args.threads,
              "cold_cache": args.cold, "catalog": str(catalog),
              "command": " ".join(["python", *sys.argv]),
              "load_average_end": os.getloadavg()[0], "rows": rows, "memory": memory}
    write_json_atomic(RESULTS / "embed.json", result, sort_keys=False)
    print(f"\nwrote {RESULTS / 'embed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
