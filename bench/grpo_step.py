"""Does one GRPO step move the policy toward its better rollouts? A diagnostic of the update.

On one iteration's scored rollouts (`rods score` output) and the policy that made them, runs
`rods train-step` once per setting and measures, on the batch's own informative sequences:

  dJ     = mean_i A_i * (lp'_i - lp_i)  with lp_i the mean log-prob of sequence i's model tokens
           before the step and lp'_i after it: > 0 when the step raised the better rollouts
           (A > 0) and lowered the worse ones, the direction the GRPO gradient asks for
  agree  = the fraction of sequences whose log-prob moved with the sign of their advantage
  |dlp|  = mean |lp'_i - lp_i|: how far the step moved the policy on these sequences
  behaviour gap = max |recorded rollout log-prob - the policy's own| on the loss tokens: ~0 when
           the importance ratios of the first step are really 1 (on-policy)
  half-batch cosine = cos(g_A, g_B), the policy gradients of two disjoint halves of the informative
           groups: near 0 when one batch's gradient is mostly noise (a step follows its sample)
  cos(step, -g) = how well the parameter change follows the batch's own gradient
  transfer (--transfer) = a step on half of the informative groups only: dJ on the groups it
           trained on, and on the other half, which it never saw (does a step help other tasks?)

Settings: the optimizer state (`restore` the input checkpoint's AdamW moments, as the loop did
after the SFT warm start, or `fresh`) x learning rates. Prints dJ of each setting and the ratio
of dJ(fresh) to dJ(restore) at each learning rate (the baseline measured in the same run).

    python bench/grpo_step.py --policy RUN/setup/policy --scored RUN/iter_000/scored.parquet --lr 1e-5 1e-4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from rodscli import grpo, records
from rodscli.stages import train as T


def sequence_logprobs(policy: Path, seqs: list[T.Sequence], temperature: float) -> list[torch.Tensor]:
    """Per sequence, the log-probs of its loss tokens under `policy` (one sequence at a time)."""
    model = T.load_model(policy, torch.device("cpu")).eval()
    module = grpo.TokenLogprobs(model, temperature)
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s.token_ids])
            mask = torch.tensor([[0] + list(s.loss_mask[1:])])
            logp, _ = module(ids, torch.ones_like(ids), mask)
            out.append(logp)
    return out


def policy_gradient(policy: Path, seqs: list[T.Sequence], temperature: float) -> torch.Tensor:
    """The flat gradient of the on-policy GRPO loss -sum_i c_i A_i sum_t log pi(x_it) (ratio 1, token-mean c_i)."""
    model = T.load_model(policy, torch.device("cpu"))
    module = grpo.TokenLogprobs(model, temperature)
    weights = grpo.sequence_weights([s.model_tokens for s in seqs], "token-mean")
    for s, w in zip(seqs, weights, strict=True):
        ids = torch.tensor([s.token_ids])
        logp, _ = module(ids, torch.ones_like(ids), torch.tensor([[0] + list(s.loss_mask[1:])]))
        (-(w * s.advantage) * logp.sum()).backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def flat_weights(policy: Path) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in T.load_model(policy, torch.device("cpu")).parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, help="the policy that made the rollouts (a loop run's setup/policy)")
    ap.add_argument("--scored", help="its scored rollouts (the run's iter_000/scored.parquet)")
    ap.add_argument("--lr", nargs="+", type=float, default=[1e-5, 1e-4])
    ap.add_argument("--states", nargs="+", default=["restore", "fresh"])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--adv-scale", default="group")
    ap.add_argument("--transfer", type=float, default=None, metavar="LR",
                    help="also take a fresh-optimizer step at LR on half of the groups and measure dJ on both halves")
    args = ap.parse_args()
    if args.policy is None or args.scored is None:
        # `make bench` runs every script with its defaults; this one needs a run's files
        print("bench/grpo_step.py needs --policy and --scored (a loop run's setup/policy and iter_000/scored.parquet): skipped")
        return
    torch.set_num_threads(1)

    scored = records.read_all(args.scored, "scored")
    cfg0 = T.TrainOptions(lr=1e-5, temperature=args.temperature, adv_scale=args.adv_scale)
    seqs, stats = T.sequences_from_scored(scored, cfg0)
    print(f"{len(scored)} rollouts, {stats['groups_kept']} of {stats['groups_total']} groups informative, "
          f"{len(seqs)} sequences, {sum(s.model_tokens for s in seqs)} model tokens")
    if not seqs:
        raise SystemExit("no informative group: nothing to diagnose")
    before = sequence_logprobs(args.policy, seqs, args.temperature)
    gap = max(float((b - torch.tensor([lp for lp, m in zip(s.old_logprobs[1:], s.loss_mask[1:], strict=True) if m])).abs().max())
              for b, s in zip(before, seqs, strict=True))
    print(f"behaviour gap (max |recorded - recomputed| log-prob): {gap:.2e}")
    lp0 = torch.stack([b.mean() for b in before])
    adv = torch.tensor([s.advantage for s in seqs])

    groups = sorted({s.key.rsplit("/", 1)[0] for s in seqs})
    half = set(groups[::2])
    g_a = policy_gradient(args.policy, [s for s in seqs if s.key.rsplit("/", 1)[0] in half], args.temperature)
    g_b = policy_gradient(args.policy, [s for s in seqs if s.key.rsplit("/", 1)[0] not in half], args.temperature)
    g = policy_gradient(args.policy, seqs, args.temperature)
    cos = torch.nn.functional.cosine_similarity
    print(f"half-batch gradient cosine ({len(half)} vs {len(groups) - len(half)} groups): {float(cos(g_a, g_b, dim=0)):+.3f}")
    theta0 = flat_weights(args.policy)

    results: dict[tuple[str, float], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.lr:
            for state in args.states:
                out = Path(tmp) / f"{state}-{lr:g}"
                cfg = T.TrainOptions(lr=lr, temperature=args.temperature, adv_scale=args.adv_scale, optimizer_state=state)
                update = T.train_step(args.policy, scored, cfg, seed=0)
                update.save(out, validate=False)
                m = update.metrics
                lp1 = torch.stack([a.mean() for a in sequence_logprobs(out, seqs, args.temperature)])
                d = lp1 - lp0
                dj = float((adv * d).mean())
                agree = float(((d * adv) > 0).float().mean())
                results[(state, lr)] = dj
                step_cos = float(cos(flat_weights(out) - theta0, -g, dim=0))
                print(f"lr {lr:g} optimizer {state:7s} (restored: {m['extra']['optimizer_restored']!s:5s}): "
                      f"dJ {dj:+.3e}  agree {agree:.2f}  |dlp| {float(d.abs().mean()):.3e}  grad norm {m['grad_norm']:.3f}  "
                      f"ratio mean {m['ratio_mean']:.4f}  cos(step, -g) {step_cos:+.3f}")
    if args.transfer is not None:
        in_a = torch.tensor([s.key.rsplit("/", 1)[0] in half for s in seqs])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "half"
            cfg = T.TrainOptions(lr=args.transfer, temperature=args.temperature, adv_scale=args.adv_scale, optimizer_state="fresh")
            T.train_step(args.policy, [r for r in scored if r["rollout_id"].rsplit("/", 1)[0] in half], cfg, seed=0).save(out, validate=False)
            d = torch.stack([a.mean() for a in sequence_logprobs(out, seqs, args.temperature)]) - lp0
        seen, unseen = float((adv * d)[in_a].mean()), float((adv * d)[~in_a].mean())
        print(f"transfer at lr {args.transfer:g}: a step on {len(half)} groups: dJ on them {seen:+.3e}, "
              f"on the {len(groups) - len(half)} other groups {unseen:+.3e} (ratio {unseen / seen:+.2f})")
    for lr in args.lr:
        if ("fresh", lr) in results and ("restore", lr) in results and results[("restore", lr)] != 0:
            print(f"lr {lr:g}: dJ(fresh) / dJ(restore) = {results[('fresh', lr)] / results[('restore', lr)]:.2f}")


if __name__ == "__main__":
    main()
