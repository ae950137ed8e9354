"""Greedy and beam search steps that make HF generate's choices, written with device tensors only (CUDA-graph safe).

Each step reads the raw logits of one decode step and updates a preallocated state in place. The current length
lives on the device (`cur`), so the same step can be captured once and replayed. The logic follows transformers'
`_sample` (greedy) and `_beam_search` (5.17 and 5.23 agree): the same processors (repetition penalty, then EOS banned
below the minimum length), the same top-k of 2 * beams candidates, the same -1e9 penalties, length penalty, early-stop
heuristic and batch-wide stop rule. Rows past `valid` pad a batch up to a graph bucket and never steer the stop rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG = -1.0e9  # the penalty transformers adds to candidates that must not be chosen


@dataclass(frozen=True)
class SearchRules:
    """What a step needs to know that does not change during one decode."""

    beams: int
    eos: int
    pad: int
    penalised: bool  # repetition_penalty != 1.0 (its value is in the state, so one graph serves every value)
    early_stopping: bool | str  # True, False or "never", as in GenerationConfig


@dataclass(frozen=True)
class DecodePlan:
    """One decode's settings: the prompt ids (BOS first), lengths counted with the prompt, and the search rules."""

    prompt: tuple[int, ...]
    max_len: int
    min_len: int
    penalty: float
    length_penalty: float
    rules: SearchRules


def penalise(scores, seqs, cur, penalty) -> torch.Tensor:
    """RepetitionPenaltyLogitsProcessor over each row's tokens so far (seqs[:, :cur]): scores of seen tokens shrink."""
    vocab = scores.shape[1]
    seen = torch.where(torch.arange(seqs.shape[1], device=seqs.device) < cur, seqs, vocab)
    mask = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device).scatter_(1, seen, True)
    return torch.where(mask[:, :vocab], torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def ban_eos(scores, cur, min_len, eos) -> torch.Tensor:
    """MinLength / MinNewTokens processors: EOS cannot be chosen while the sequence is shorter than min_len."""
    scores[:, eos] = torch.where(cur < min_len, float("-inf"), scores[:, eos])
    return scores


class GreedyState:
    """What greedy decoding carries between steps, for rows images (padded rows start finished)."""

    def __init__(self, rows: int, length: int, device):
        self.cur = torch.zeros(1, dtype=torch.long, device=device)
        self.max_len = torch.zeros(1, dtype=torch.long, device=device)
        self.min_len = torch.zeros(1, dtype=torch.long, device=device)
        self.penalty = torch.ones((), dtype=torch.float32, device=device)
        self.last = torch.zeros(rows, dtype=torch.long, device=device)
        self.seqs = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.unfinished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.raw_sum = torch.zeros(rows, dtype=torch.float32, device=device)
        self.generated = torch.zeros(rows, dtype=torch.long, device=device)
        self.done = torch.zeros(1, dtype=torch.bool, device=device)

    def start(self, prompt, plan: DecodePlan) -> None:
        """Reset for a new batch: prompt [valid, P] on the device."""
        valid, prompt_len = prompt.shape
        self.cur.fill_(prompt_len)
        self.max_len.fill_(plan.max_len)
        self.min_len.fill_(plan.min_len)
        self.penalty.fill_(plan.penalty)
        self.seqs.fill_(plan.rules.pad)
        self.seqs[:valid, :prompt_len] = prompt
        self.last.fill_(plan.rules.pad)
        self.unfinished.zero_()
        self.unfinished[:valid] = True
        self.raw_sum.zero_()
        self.generated.zero_()
        self.done.zero_()


def greedy_step(state: GreedyState, logits: torch.Tensor, rules: SearchRules) -> None:
    """One step of `_sample` with do_sample=False: argmax of the processed logits; finished rows get pad."""
    scores = logits
    if rules.penalised:
        scores = penalise(scores, state.seqs, state.cur, state.penalty)
    scores = ban_eos(scores.clone() if scores is logits else scores, state.cur, state.min_len, rules.eos)
    # max's indices are argmax's (the first of equal maxima; NaN wins alike), and on the CPU it runs 2-3x faster
    chosen = torch.where(state.unfinished, scores.max(dim=-1).indices, rules.pad)
    raw = F.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)
    state.raw_sum.add_(torch.where(state.unfinished, raw, 0.0))
    state.generated.add_(state.unfinished.long())
    state.seqs.scatter_(1, state.cur.expand(chosen.shape[0], 1), chosen[:, None])
    state.last.copy_(chosen)
    state.unfinished.logical_and_(~((chosen == rules.eos) | (state.cur + 1 >= state.max_len)))
    state.cur.add_(1)
    state.done.copy_(~state.unfinished.any().view(1))


class BeamState:
    """What beam search carries between steps: running beams and the kept finished hypotheses, per image."""

    def __init__(self, images: int, beams: int, length: int, device):
        long, real = dict(dtype=torch.long, device=device), dict(dtype=torch.float32, device=device)
        flag = dict(dtype=torch.bool, device=device)
        self.cur, self.max_len, self.min_len, self.prompt_len = (torch.zeros(1, **long) for _ in range(4))
        self.penalty = torch.ones((), **real)
        self.finish_norm = torch.ones(length + 1, **real)  # (cur + 1 - P) ** length_penalty, by cur
        self.bound_norm = torch.ones(length + 2, **real)  # the early-stop heuristic's length ** length_penalty, by cur
        self.valid = torch.zeros(images, 1, **flag)
        self.last = torch.zeros(images * beams, **long)
        self.run_seqs = torch.zeros(images, beams, length, **long)
        self.run_scores = torch.zeros(images, beams, **real)
        self.run_raw = torch.zeros(images, beams, **real)
        self.fin_seqs = torch.zeros(images, beams, length, **long)
        self.fin_scores = torch.zeros(images, beams, **real)
        self.fin_raw = torch.zeros(images, beams, **real)
        self.fin_len = torch.zeros(images, beams, **long)
        self.fin_done = torch.zeros(images, beams, **flag)
        self.unsatisfied = torch.ones(images, 1, **flag)
        self.parents = torch.zeros(images * beams, **long)
        self.done = torch.zeros(1, **flag)

    def start(self, prompt, plan: DecodePlan) -> None:
        """Reset for a new batch, as `_beam_search` initialises: beam 0 live, the others at -1e9, nothing finished."""
        valid, prompt_len = prompt.shape
        max_len, length_penalty = plan.max_len, plan.length_penalty
        for tensor, value in ((self.cur, prompt_len), (self.max_len, max_len), (self.min_len, plan.min_len)):
            tensor.fill_(value)
        self.prompt_len.fill_(prompt_len)
        self.penalty.fill_(plan.penalty)
        length = self.finish_norm.shape[0] - 1
        # Python float powers, rounded to float32 as transformers' tensor / float does.
        self.finish_norm.copy_(torch.tensor([float(max(c + 1 - prompt_len, 1)) ** length_penalty for c in range(length + 1)]))
        never = plan.rules.early_stopping == "never" and length_penalty > 0.0
        bound = [float(max((max_len if never else c) - prompt_len, 1)) ** length_penalty for c in range(length + 2)]
        self.bound_norm.copy_(torch.tensor(bound))
        self.valid.zero_()
        self.valid[:valid] = True
        self.run_seqs.fill_(plan.rules.pad)
        self.run_seqs[:valid, :, :prompt_len] = prompt[:, None, :]
        self.fin_seqs.copy_(self.run_seqs)
        self.run_scores.zero_()
        self.run_scores[:, 1:] = NEG
        self.run_raw.zero_()
        self.fin_scores.fill_(NEG)
        self.fin_raw.zero_()
        self.fin_len.zero_()
        self.fin_done.zero_()
        self.unsatisfied.fill_(True)
        self.last.fill_(plan.rules.pad)
        self.parents.copy_(torch.arange(self.parents.shape[0], device=self.parents.device))
        self.done.zero_()


def _along(tensor, index):
    """tensor gathered along dim 1 by index [B, k] (transformers' _gather_beams)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_step(state: BeamState, logits: torch.Tensor, rules: SearchRules) -> None:
    """One iteration of `_beam_search`'s loop (steps b to g); state.parents names each new beam's source row."""
    images, beams, length = state.run_seqs.shape
    vocab = logits.shape[1]
    raw = F.log_softmax(logits, dim=-1)
    scores = raw
    if rules.penalised:
        scores = penalise(scores, state.run_seqs.view(images * beams, length), state.cur, state.penalty)
    scores = ban_eos(scores.clone() if scores is raw else scores, state.cur, state.min_len, rules.eos)
    accumulated = (scores.view(images, beams, vocab) + state.run_scores[:, :, None]).view(images, beams * vocab)

    # c. the top 2 * beams continuations across all beams of an image
    top_scores, top_index = torch.topk(accumulated, 2 * beams)
    source = top_index // vocab
    tokens = top_index % vocab
    top_seqs = _along(state.run_seqs, source)
    top_seqs.scatter_(2, state.cur.expand(images, 2 * beams, 1), tokens[:, :, None])
    top_raw = _along(state.run_raw, source) + raw.view(images, beams * vocab).gather(1, top_index)

    # d. which candidates stop here: EOS, or the maximum length reached
    hits = (tokens == rules.eos) | (state.cur + 1 >= state.max_len)

    # e. the best `beams` candidates that go on
    running = top_scores + hits.to(torch.float32) * NEG
    keep = torch.topk(running, beams)[1]
    state.run_seqs.copy_(_along(top_seqs, keep))
    state.run_scores.copy_(_along(running, keep))
    state.run_raw.copy_(_along(top_raw, keep))
    state.last.copy_(_along(tokens, keep).view(-1))
    offsets = torch.arange(images, device=logits.device)[:, None] * beams
    state.parents.copy_((_along(source, keep) + offsets).view(-1))

    # f. finished candidates among the first `beams` join the kept hypotheses if they score higher
    just_finished = hits.clone()
    just_finished[:, beams:] = False
    finished = top_scores / state.finish_norm[state.cur]
    if rules.early_stopping is True:
        finished += torch.all(state.fin_done, dim=-1, keepdim=True).to(torch.float32) * NEG
    finished += (~state.unsatisfied).to(torch.float32) * NEG
    finished += (~just_finished).to(torch.float32) * NEG
    merged = torch.cat((state.fin_scores, finished), dim=1)
    best = torch.topk(merged, beams)[1]
    frozen = state.done  # transformers stops here; later steps (graph replays) must not change the result
    new_len = (state.cur + 1 - state.prompt_len).expand(images, 2 * beams)
    pairs = (state.fin_seqs, top_seqs), (state.fin_raw, top_raw), (state.fin_len, new_len), (state.fin_done, just_finished)
    for kept, candidates in pairs:
        kept.copy_(torch.where(frozen, kept, _along(torch.cat((kept, candidates), dim=1), best)))
    state.fin_scores.copy_(torch.where(frozen, state.fin_scores, _along(merged, best)))

    # g. the batch-wide stop rule, after the length grows by one
    state.cur.add_(1)
    best_running = state.run_scores[:, :1] / state.bound_norm[state.cur]
    worst_kept = torch.where(state.fin_done, torch.min(state.fin_scores, dim=1, keepdim=True)[0], NEG)
    state.unsatisfied.logical_and_(torch.any(best_running > worst_kept, dim=-1, keepdim=True))
    improvable = torch.any(state.unsatisfied & state.valid)
    open_beams = ~(torch.all(state.fin_done | ~state.valid) & (rules.early_stopping is True))
    continuable = ~torch.all(hits | ~state.valid)
    state.done.logical_or_(~(improvable & open_beams & continuable).view(1))
