"""Embedding builder benchmark (issue 5): raw forward vs end-to-end, local vs Ray, memory.

In one run, for each modality:
  * raw model forward throughput (spectra/s) of the default ``small`` model and of the
    ``specclip``-size model (random weights: speed does not depend on them), same threads;
  * end-to-end builder throughput (read Parquet -> preprocess -> encode -> heads -> write
    Parquet) and its ratio to the raw forward (goal >= 0.8; the raw forward here includes
    ``prepare_model_input``, the same preprocessing the builder runs);
  * the Ray engine vs the local engine on the same catalog;
  * peak resident memory of ``specsearch embed`` on a catalog 10x larger than the batch
    buffer vs one 1x as large (bounded memory: the two should be close).

Usage:
  python benchmarks/bench_embed.py                  # 20k-star synthetic catalog
  python benchmarks/bench_embed.py --n 100000 --skip-ray
Writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from specsearch.embed import EmbedConfig, build_embeddings
from specsearch.io.catalog import list_column_to_numpy, open_catalog
from specsearch.model import load_model
from specsearch.preprocess import grid_for

RESULTS = Path(__file__).resolve().parent / "results"


def random_model(name: str, workdir: Path):
    """A model of architecture ``name`` with random weights, through the public save/load."""
    from specsearch.model.checkpoint import save_model_dir
    from specsearch.model.config import model_config
    from specsearch.model.network import SpecCLIPNet

    default = load_model()
    cfg = model_config(name).with_data(label_names=list(default.label_names),
                                       class_names=list(default.class_names))
    path = workdir / f"random-{name}"
    save_model_dir(path, SpecCLIPNet(cfg), cfg)
    return load_model(path)


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


def raw_forward(model, modality: str, flux: np.ndarray, ivar: np.ndarray,
                batch_size: int, min_seconds: float = 3.0) -> float:
    """Spectra/s of ``embed_numpy`` (preprocessing + encoder + heads) on in-memory arrays."""
    model.embed_numpy(modality, flux[:batch_size], ivar[:batch_size])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for i in range(0, flux.shape[0], batch_size):
            model.embed_numpy(modality, flux[i:i + batch_size], ivar[i:i + batch_size],
                              batch_size=batch_size)
            done += min(batch_size, flux.shape[0] - i)
    return done / (time.perf_counter() - start)


def peak_rss_of_embed(catalog: Path, out: Path, batch_size: int, modality: str) -> float:
    """Peak RSS (MB) of a ``specsearch embed`` child process."""
    code = ("import resource,sys\nfrom specsearch.cli import main\n"
            "rc=main(sys.argv[1:])\n"
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    res = subprocess.run([sys.executable, "-c", code, "embed", "--catalog", str(catalog),
                          "--out", str(out), "--batch-size", str(batch_size),
                          "--modality", modality, "--no-progress"],
                         capture_output=True, text=True, check=True)
    kb = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PEAK_KB")]
    return int(kb[-1]) / 1024.0


def make_catalog(n: int, out: Path, seed: int, rows_per_file: int) -> Path:
    subprocess.run([sys.executable, "-m", "specsearch", "synth", "--n", str(n), "--seed",
                    str(seed), "--out", str(out), "--shard-size", str(rows_per_file)],
                   check=True, capture_output=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="stars in the benchmark catalog")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-embed-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / "catalog"
    if not (catalog / "catalog.json").is_file():
        print(f"generating a {args.n}-star synthetic catalog in {catalog} ...", flush=True)
        make_catalog(args.n, catalog, seed=1, rows_per_file=max(args.n // 4, 1000))
    small = load_model()
    specclip = random_model("specclip", work)
    rows = []
    for modality in ("lamost", "xp"):
        flux, ivar = sample_spectra(catalog, modality, 8192 if modality == "xp" else 4096)
        r_small = raw_forward(small, modality, flux, ivar, args.batch_size)
        n_big = 256 if modality == "lamost" else 4096
        r_big = raw_forward(specclip, modality, flux[:n_big], ivar[:n_big],
                            min(args.batch_size, 64 if modality == "lamost" else 1024),
                            min_seconds=5.0)
        out = work / f"emb-local-{modality}"
        rep = build_embeddings(catalog, small, out, EmbedConfig(
            modalities=[modality], batch_size=args.batch_size, progress=False,
            overwrite=True))
        # a rerun would reuse the files: time a fresh directory each run
        e2e = rep.spectra_per_s
        row = {"modality": modality, "npix": grid_for(modality).npix,
               "raw_small_per_s": r_small, "raw_specclip_per_s": r_big,
               "small_over_specclip": r_small / r_big,
               "e2e_local_per_s": e2e, "e2e_over_raw": e2e / r_small,
               "rows": rep.rows_in}
        if not args.skip_ray:
            from specsearch.embed.ray_engine import build_embeddings_ray

            rrep = build_embeddings_ray(catalog, None, work / f"emb-ray-{modality}",
                                        EmbedConfig(modalities=[modality],
                                                    batch_size=args.batch_size,
                                                    progress=False),
                                        num_cpus=args.threads)
            row["e2e_ray_per_s"] = rrep.spectra_per_s
            row["ray_over_local"] = rrep.spectra_per_s / e2e
        rows.append(row)
    memory = {}
    if not args.skip_memory:
        small_bs = 256
        memory = {
            "batch_size": small_bs,
            "catalog_rows": args.n,
            "peak_rss_mb_full_catalog": peak_rss_of_embed(catalog, work / "mem-a", small_bs,
                                                           "lamost"),
        }
    print(f"\nEmbedding builder benchmark  ({platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__})")
    head = (f"{'modality':8} {'raw small/s':>12} {'raw specclip/s':>15} {'ratio':>7} "
            f"{'e2e local/s':>12} {'e2e/raw':>8} {'e2e ray/s':>10} {'ray/local':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['modality']:8} {r['raw_small_per_s']:12,.0f} {r['raw_specclip_per_s']:15,.1f} "
              f"{r['small_over_specclip']:7.0f} {r['e2e_local_per_s']:12,.0f} "
              f"{r['e2e_over_raw']:8.2f} {r.get('e2e_ray_per_s', float('nan')):10,.0f} "
              f"{r.get('ray_over_local', float('nan')):9.2f}")
    if memory:
        print(f"\npeak RSS of `specsearch embed` (batch {memory['batch_size']}, "
              f"{memory['catalog_rows']} rows = "
              f"{memory['catalog_rows'] / memory['batch_size']:.0f}x the batch): "
              f"{memory['peak_rss_mb_full_catalog']:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "threads": args.threads, "rows": rows,
              "memory": memory, "n": args.n, "batch_size": args.batch_size}
    (RESULTS / "embed.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS / 'embed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
