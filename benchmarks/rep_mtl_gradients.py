"""Does Rep-MTL's regulariser reach the shared representation? Gradient norms per architecture, in float64.

For each architecture (hps with linear heads and with task towers, mmoe, shared_private, ft_transformer), at
initialisation, on one batch of the flights train window: the norm of the regulariser's gradient on the trunk
(the parameters Z depends on) against the task losses' gradient there, ‖∇_trunk R‖ / ‖∇_trunk L‖, for TSR and CSA
apart and together; the same on Z itself; and the cosine between ∇_Z R and ∇_Z L (below 0: R pulls Z against the
losses). Every TSR normalisation in `TSR_VARIANTS` is measured:

- `per_sample`: each (sample, task)'s saliency normalised over its positions (the project's step until issue 36).
  With piecewise-linear heads a sample's saliency is its residual g times a vector that depends on Z only through
  ReLU masks, so dividing per sample removes g and, with it, every path to Z;
- `none`: the paper's statement, the raw magnitudes normalised over the tasks only;
- `per_task`: each task's saliency divided by its mean magnitude over the batch and positions
  (`components.training.rep_mtl` now): a task whose residuals are all larger does not dominate (the audit's scale
  problem), but which samples a task fits worse still shapes P, so the gradient reaches Z.

CSA is measured as the project defines it (cosine similarity of L2-normalised saliencies, as the paper states).

    .venv/bin/python -m benchmarks.rep_mtl_gradients --seeds 3 --out benchmarks/results/rep_mtl_gradients
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from components.config.plugins import with_options
from components.config.schema import ProjectConfig, RepMtlSpec, parse_config
from components.data.features import FeatureSpec
from components.data.tables import load_source, sample_rows, select_window, with_labels
from components.training.architectures import SharedRepresentation, build_model
from components.training.rep_mtl import EPS, csa_loss, saliencies, tsr_loss
from components.training.train import TensorData, masked_loss, to_tensors

ROOT = Path(__file__).resolve().parents[1]

# the architectures as tests/test_rep_mtl.py builds them: small, so the measurement takes seconds; hps and
# shared_private with linear heads too, past the config (which asks for towers there, for CSA's sake)
ARCHITECTURES: dict[str, dict] = {
    "hps": {"architecture": "hps", "hidden": [32, 16]},
    "hps+towers": {"architecture": "hps", "hidden": [32, 16], "head_hidden": 8},
    "mmoe": {"architecture": "mmoe", "hidden": [32, 16], "experts": 3},
    "shared_private": {"architecture": "shared_private", "hidden": [32, 16], "private_hidden": [8]},
    "ft_transformer": {"architecture": "ft_transformer", "token_dim": 8, "attention_layers": 2,
                       "attention_heads": 2},
}


def tsr_per_sample(s: torch.Tensor) -> torch.Tensor:
    """TSR as it was before issue 36: normalised over the positions of each (sample, task)."""
    magnitude = s.abs().mean(dim=-1)
    where = magnitude / (magnitude.sum(dim=2, keepdim=True) + EPS)
    p = where / (where.sum(dim=0, keepdim=True) + EPS)
    return -(p * torch.log(p + EPS)).sum(dim=0).mean()


def tsr_unnormalised(s: torch.Tensor) -> torch.Tensor:
    """TSR as the paper states it: raw magnitudes, normalised over the tasks only."""
    magnitude = s.abs().mean(dim=-1)
    p = magnitude / (magnitude.sum(dim=0, keepdim=True) + EPS)
    return -(p * torch.log(p + EPS)).sum(dim=0).mean()


TSR_VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "per_sample": tsr_per_sample, "none": tsr_unnormalised, "per_task": tsr_loss}


def flights_batch(rows: int) -> tuple[ProjectConfig, FeatureSpec, TensorData]:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "flights.yaml").read_text())
    cfg = parse_config(raw, "configs/flights.yaml")
    df = load_source(cfg.data, ROOT)
    df = with_labels(sample_rows(df[df[cfg.data.time_column] < "2013-05-01"].reset_index(drop=True), 0.05, seed=0),
                     cfg)
    w = cfg.data.windows.train
    train = select_window(df, cfg.data.time_column, w.start, w.end).head(rows)
    spec = FeatureSpec.fit(train, cfg)
    return cfg, spec, to_tensors(train, spec)


def norm(grads: tuple[torch.Tensor | None, ...]) -> float:
    return sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5


def measure(model: SharedRepresentation, cfg: ProjectConfig, data: TensorData, tsr: Callable, rep: RepMtlSpec) -> dict:
    """Gradient norms of L = Σ L_t, TSR, CSA and R = λ_tsr·TSR + λ_csa·CSA on Z and on the trunk, one batch."""
    numeric = data.numeric.double()
    z, out = model.represent(numeric, data.categorical)
    losses = {t.name: masked_loss(t, out[t.name], data.targets[t.name].double()) for t in cfg.tasks}
    s = saliencies(losses, z)
    terms = {"L": sum(losses.values()), "TSR": tsr(s), "CSA": csa_loss(s, rep.tau, rep.csa_samples)}
    terms["R"] = rep.lambda_tsr * terms["TSR"] + rep.lambda_csa * terms["CSA"]
    params = [p for p in model.parameters() if p.requires_grad]
    upstream = torch.autograd.grad(z.sum(), params, retain_graph=True, allow_unused=True)
    trunk = [p for p, g in zip(params, upstream, strict=True) if g is not None]
    result: dict[str, float] = {}
    grad_z = {}
    for name, term in terms.items():
        if not term.requires_grad:
            grad_z[name], result[f"trunk {name}"] = torch.zeros_like(z), 0.0
            continue
        grad_z[name] = torch.autograd.grad(term, z, retain_graph=True, allow_unused=True)[0]
        if grad_z[name] is None:
            grad_z[name] = torch.zeros_like(z)
        result[f"trunk {name}"] = norm(torch.autograd.grad(term, trunk, retain_graph=True, allow_unused=True))
        result[f"z {name}"] = float(grad_z[name].norm())
    result["cos"] = float(torch.nn.functional.cosine_similarity(grad_z["R"].flatten(), grad_z["L"].flatten(), dim=0))
    return result


def table(cfg: ProjectConfig, spec: FeatureSpec, data: TensorData, seeds: int) -> list[str]:
    rep = RepMtlSpec()
    lines = ["| architecture | TSR normalisation | ‖∇trunk R‖/‖∇trunk L‖ | TSR / L | CSA / L | "
             "‖∇Z R‖/‖∇Z L‖ | cos(∇Z R, ∇Z L) |", "|---|---|---|---|---|---|---|"]
    for arch, options in ARCHITECTURES.items():
        model_cfg = with_options(cfg.model, **options)
        for variant, tsr in TSR_VARIANTS.items():
            runs = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build_model(spec, model_cfg).double().eval()  # eval: no dropout noise in the ratio
                runs.append(measure(model, cfg, data, tsr, rep))  # type: ignore[arg-type]

            def med(key: str, runs: list[dict] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            lines.append(f"| {arch} | {variant} | {med('trunk R') / med('trunk L'):.2e} | "
                         f"{med('trunk TSR') / med('trunk L'):.2e} | {med('trunk CSA') / med('trunk L'):.2e} | "
                         f"{med('z R') / med('z L'):.2e} | {med('cos'):+.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512, help="rows of the batch (default 512)")
    parser.add_argument("--seeds", type=int, default=3, help="initialisations per cell, the median is shown")
    parser.add_argument("--out", type=Path, help="also write the table to <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, spec, data = flights_batch(args.rows)
    lines = table(cfg, spec, data, args.seeds)
    text = "\n".join([f"Rep-MTL gradient reach, float64, at initialisation, {args.rows} rows of the flights train "
                      f"window, median of {args.seeds} initialisations, λ_tsr = λ_csa = 1, τ = 0.5:", "", *lines])
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
