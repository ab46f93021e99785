"""Model encoder throughput (issue 4): the default ``small`` model vs a ``specclip``-size one.

In one run, same threads, for each modality:
  * raw forward: the encoder on already prepared tensors (``SpecModel.encode``), the
    ceiling of any pipeline; ``small`` (the shipped default model, or ``--model``) against a
    randomly initialised ``specclip`` network (SpecCLIP sizes: 6-layer 768-d transformer
    over 20-pixel patches for LAMOST, width-1290 MLP for XP) and their ratio;
  * optionally bf16 autocast (``--bf16``; CPUs with AVX512-BF16 run it faster);
  * ``embed_numpy`` (preprocessing with ``prepare_model_input`` + encoder + heads), i.e.
    what the embedding builder calls per batch.

Throughput is the best of ``--repeats`` timed windows of ``--seconds`` each (the machine is
shared; the load average before and after is recorded). Threads are set with
``torch.set_num_threads(--threads)`` (default 2).

Usage:
  python benchmarks/bench_model.py
  python benchmarks/bench_model.py --threads 1 --seconds 3 --bf16
Writes benchmarks/results/model.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the shipped default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="length of a timed window")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS / "model.json")
    return p.parse_args()


def main() -> int:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from specsearch.model import load_model, model_config
    from specsearch.model.network import SpecCLIPNet
    from specsearch.model.evaluation.speed import (BASELINE_BATCH, embed_speed, format_speed,
                                        raw_forward_speed)

    load_before = os.getloadavg()
    model = load_model(args.model, device=args.device)
    base = SpecCLIPNet(model_config("specclip").with_data(label_names=(), class_names=()))
    results = []

    def best(fn, **kw):
        runs = [fn(**kw) for _ in range(args.repeats)]
        return max(runs, key=lambda r: r.spectra_per_s)

    ratios = {}
    for m in model.modalities:
        amps = [False, True] if args.bf16 else [False]
        for amp in amps:
            small = best(raw_forward_speed, net=model.net, modality=m,
                         batch_size=args.batch_size, min_seconds=args.seconds,
                         device=args.device, autocast=amp, arch=model.config.name)
            big = best(raw_forward_speed, net=base, modality=m,
                       batch_size=BASELINE_BATCH.get(("specclip", m), 256)
                       if args.device == "cpu" else args.batch_size // 4,
                       min_seconds=args.seconds, device=args.device, autocast=amp,
                       arch="specclip")
            tag = " bf16" if amp else ""
            small.what += tag
            big.what += tag
            results += [small, big]
            ratios[f"{m}{tag}"] = small.spectra_per_s / big.spectra_per_s
        model.net.to(args.device)
        results.append(best(embed_speed, model=model, modality=m, n=2 * args.batch_size,
                            batch_size=args.batch_size))
    table = format_speed(results)
    print(f"model {model.config.name} {model.model_hash[:12]}; threads {args.threads}; "
          f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(table)
    for k, v in ratios.items():
        print(f"raw forward speed-up small/specclip, {k}: {v:,.0f}x")
    out = {"model": str(model.path), "model_hash": model.model_hash,
           "threads": args.threads, "device": args.device,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "machine": platform.processor() or platform.machine(),
           "python": sys.version.split()[0], "torch": torch.__version__,
           "results": [dataclasses.asdict(r) for r in results], "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
