"""Data-parallel training of the character-level GPT, one process per rank (written out by data_parallel.ipynb).

    torchrun --nproc_per_node=N dp_train.py --modes checks,bench,train --config cfg.json --out results.json

torchrun starts N copies of this file and tells each its RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous
address (MASTER_ADDR, MASTER_PORT) in environment variables. The same file runs on CPUs with gloo and on
GPUs with NCCL; only `setup` tells them apart.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import common

RESUMABLE = (*common.checkpoint.RESUMABLE_FIELDS, "world_size")  # may change on resume: batches do not depend on ranks


def setup(cfg: SimpleNamespace) -> tuple[int, int, torch.device]:
    """Join the process group that torchrun describes; returns (rank, world size, this rank's device)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = common.get_device(verbose=False)
    if device.type == "cuda" and torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"]):
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process: local rank i drives GPU i
        torch.cuda.set_device(device)
        backend = "nccl"
    else:  # a CPU, or more ranks than GPUs (NCCL cannot share a GPU between ranks): gloo, the cores shared out
        device = torch.device("cpu")
        backend = "gloo"
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.collective_timeout_s))
    return rank, world, device


def say(*args, **kwargs) -> None:
    """print on rank 0 only: N ranks printing the same line would print it N times."""
    if dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def load_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Tiny Shakespeare as token ids on `device`: first 90% train, last 10% validation (as in the char-GPT)."""
    text = common.load_tinyshakespeare()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_train = int(0.9 * len(data))
    return data[:n_train].to(device), data[n_train:].to(device), chars


def global_batch(data: torch.Tensor, cfg: SimpleNamespace, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole step's batch: `batch_size` random windows, inputs x and next-character targets y, both (B, T).

    Every rank holds a generator with the same seed and state, so every rank draws the same global batch."""
    starts = torch.randint(len(data) - cfg.block_size, (cfg.batch_size,), generator=gen)
    offsets = starts[:, None] + torch.arange(cfg.block_size + 1)  # (B, 1) + (T+1,) -> (B, T+1)
    window = data[offsets.to(data.device)]  # (B, T+1)
    return window[:, :-1], window[:, 1:]  # (B, T), (B, T)


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of a global batch, rank-strided: rows rank, rank + N, rank + 2N, ... (B, ...) -> (B/N, ...)."""
    assert x.shape[0] % world == 0, f"a global batch of {x.shape[0]} does not split into {world} equal shards"
    return x[rank::world]


def flat_params(model: nn.Module) -> torch.Tensor:
    """Every parameter in one float32 vector (a tied weight once), to compare two models."""
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])  # -> (P,)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, Eq. 1, through SDPA): (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)  # W^Q, W^K, W^V of all heads at once
        self.proj = nn.Linear(n_embd, n_embd, bias=False)  # W^O
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, nh*hs)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The char-GPT of text_generation/char_gpt: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, vocab_size: int, cfg: SimpleNamespace):
        super().__init__()
        self.block_size = cfg.block_size
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg.n_embd, cfg.n_head, cfg.dropout) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):  # writes into the residual stream
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C) + (T, C) -> (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, C) -> (B, T, vocab)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats over every position of every sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))  # (B, T, V) -> (B*T, V)


def make_optimizer(model: nn.Module, cfg: SimpleNamespace) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only, as in the char-GPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: SimpleNamespace) -> float:
    """Linear warm-up, then cosine decay to `min_lr_frac * lr` at `max_steps` (the char-GPT's schedule)."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps)
    progress = min(step / cfg.max_steps, 1.0)
    return cfg.lr * warmup * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


VARIANTS = ("single", "reordered", "accumulation", "manual", "ddp", "ddp_no_sync", "ddp_sync_every", "fsdp",
            "sum_not_mean", "no_allreduce")
ONE_PROCESS = ("single", "reordered", "accumulation")  # methods of one process: rank 0 runs them alone
CONTROLS = ("sum_not_mean", "no_allreduce")  # broken on purpose: a check that passes one cannot see its fault


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: SimpleNamespace) -> None:
    """Clip the global gradient norm, step at the constant peak learning rate `lr`. Identical in every variant, after
    the gradients are averaged; no warm-up here, so that a different gradient shows as a different step."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()


def counting_hook(log: list, bucket):  # no annotations: DDP checks them, and this file's are strings
    """What DDP does with a full bucket (a dist.GradBucket) by default: divide by N, all-reduce it, return the
    torch.futures.Future of the result. And log the bucket's bytes."""
    log.append(bucket.buffer().numel() * bucket.buffer().element_size())
    return default_hooks.allreduce_hook(None, bucket)


def backward(name: str, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int,
             world: int) -> None:
    """One step's gradients into `.grad`, averaged over the whole batch the way variant `name` does it."""
    xs, ys = shard(x, rank, world), shard(y, rank, world)  # (B, T) -> (B/N, T): this rank's shard
    if name == "single":  # the reference: one process, the whole batch, Eq. 1
        lm_loss(model(x), y).backward()
    elif name == "reordered":  # the same, rows in another order: float32 round-off only
        order = torch.cat([torch.arange(r, x.shape[0], world) for r in range(world)])  # the rows, shard by shard
        lm_loss(model(x[order]), y[order]).backward()
    elif name == "accumulation":  # one process, N micro-batches one after the other: Eq. 2 in time
        for r in range(world):
            (lm_loss(model(shard(x, r, world)), shard(y, r, world)) / world).backward()  # grads add up
    elif name in ("manual", "sum_not_mean"):  # N processes, one shard each, then Eq. 2 by hand
        lm_loss(model(xs), ys).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            if name == "manual":
                p.grad /= world  # the control `sum_not_mean` forgets this division
    elif name in ("ddp", "fsdp", "no_allreduce"):  # hooks average (DDP) or reduce-scatter (FSDP); the control: none
        lm_loss(net(xs), ys).backward()
    else:  # ddp_no_sync, ddp_sync_every: accumulation on top of DDP, two micro-batches of the shard per rank
        with net.no_sync() if name == "ddp_no_sync" else contextlib.nullcontext():  # no_sync: grads stay local
            (lm_loss(net(shard(xs, 0, 2)), shard(ys, 0, 2)) / 2).backward()  # (B/N, T) -> (B/2N, T)
        (lm_loss(net(shard(xs, 1, 2)), shard(ys, 1, 2)) / 2).backward()  # the last micro-batch all-reduces


def flat_whole(tensors) -> torch.Tensor:
    """Tensors as one float32 vector; FSDP's sharded DTensors are all-gathered whole first (a collective)."""
    return torch.cat([(t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float().reshape(-1)
                      for t in tensors])  # -> (P,)


def run_variant(name: str, data: torch.Tensor, vocab: int, cfg: SimpleNamespace, rank: int, world: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list, nn.Module, torch.optim.Optimizer]:
    """`check_steps` steps of one way of training, from the same weights on the same global batches.

    Returns this rank's parameters at the end and its first step's averaged gradient (before any optimiser step),
    each as one vector, the bytes of every bucket DDP all-reduced in each step, the model and its optimizer."""
    torch.manual_seed(cfg.seed)  # the same initial weights in every variant and on every rank
    model = net = GPT(vocab, cfg).to(device)
    buckets, buckets_by_step = [], []
    if name.startswith("ddp"):
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.register_comm_hook(buckets, counting_hook)
    if name == "fsdp":  # shard every block's parameters, then the rest (embeddings, final norm) at the root
        mesh = init_device_mesh(device.type, (world,))  # the ranks' own device type: left out, FSDP picks CUDA if any
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = make_optimizer(model, cfg)  # built after sharding, so that FSDP's optimizer holds shards only
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.check_steps):
        x, y = global_batch(data, cfg, gen)  # (B, T) each, identical on every rank
        opt.zero_grad(set_to_none=True)
        backward(name, model, net, x, y, rank, world)
        if step == 0:
            grad0 = flat_whole(p.grad for p in model.parameters())  # the averaged gradient, before any step
        buckets_by_step.append(list(buckets))
        buckets.clear()
        optimizer_step(model, opt, cfg)
    return flat_whole(model.parameters()), grad0, buckets_by_step, model, opt


def local_bytes(tensors) -> int:
    """Bytes these tensors occupy on this rank (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def memory_per_rank(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state (AdamW: two moments and a step count) held by this rank."""
    params = list(model.parameters())
    return {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": local_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))}


def checks(data: torch.Tensor, vocab: int, cfg: SimpleNamespace, rank: int, world: int, device: torch.device) -> dict:
    """Every variant for `check_steps` steps; rank 0 compares each with the one-process reference."""
    params, grads, buckets, memory = {}, {}, {}, {}
    for name in VARIANTS:
        if name in ONE_PROCESS and rank != 0:
            continue  # the other ranks go ahead and wait in the first collective of `manual`
        start = time.perf_counter()
        params[name], grads[name], buckets[name], model, opt = run_variant(name, data, vocab, cfg, rank, world, device)
        memory[name] = memory_per_rank(model, opt)
        say(f"{name:>14}: {cfg.check_steps} steps in {time.perf_counter() - start:5.2f} s")
    spread = {}  # how far the ranks' own copies of the model are apart (all ranks take part)
    for name in ("manual", "ddp", "no_allreduce"):
        rank0 = params[name].clone()
        dist.broadcast(rank0, src=0)
        gap = (params[name] - rank0).abs().max()
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        spread[name] = gap.item()
    if rank != 0:
        return {}
    ref, g_ref = params["single"], grads["single"]
    others = [n for n in VARIANTS if n != "single"]
    return {"max_param_diff": {n: (params[n] - ref).abs().max().item() for n in others},
            "max_grad_rel_diff": {n: ((grads[n] - g_ref).abs().max() / g_ref.abs().max()).item() for n in others},
            "bitwise_equal_to_manual": {n: torch.equal(params[n], params["manual"]) and torch.equal(grads[n], grads["manual"])
                                        for n in ("accumulation", "ddp", "ddp_no_sync", "fsdp")},
            "ddp_bucket_bytes_by_step": {n: buckets[n] for n in VARIANTS if n.startswith("ddp")},
            "max_param_spread_across_ranks": spread,
            "max_abs_param": ref.abs().max().item(), "n_params": ref.numel(), "device": device.type,
            "memory_per_rank": {n: memory[n] for n in ("ddp", "fsdp")}, "world_size": world}


@torch.no_grad()
def estimate_loss(model: nn.Module, data: torch.Tensor, cfg: SimpleNamespace, rank: int, world: int, seed: int) -> float:
    """Mean loss over `eval_batches` fixed batches in full fp32, data-parallel too: rank r scores batches r, r + N, ..."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros((), device=data.device)
    with common.fp32_exact():
        for i in range(cfg.eval_batches):
            x, y = global_batch(data, cfg, gen)  # every rank draws every batch: the generators stay in step
            if i % world == rank:
                total += lm_loss(model(x), y)
    dist.all_reduce(total)  # the sum over ranks of their batches' losses
    model.train()
    return total.item() / cfg.eval_batches


def save_state(path: str, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               gen: torch.Generator, counters: dict, clock: common.RunClock, cfg: SimpleNamespace) -> None:
    """Rank 0 writes the checkpoint: after an all-reduced step every rank holds the same model and optimizer.
    `counters`: the step, the history and the loss summed since the last log (over all ranks), with its count."""
    if dist.get_rank() == 0:
        common.save_checkpoint(path, {"model": model.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                                      "batch_gen": gen.get_state(), **counters, "clock": clock.state_dict()},
                               config=vars(cfg))


def train_step(ddp: DDP, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor,
               lr: float, cfg: SimpleNamespace) -> torch.Tensor:
    """One optimisation step on this rank's shard (x, y: (B/N, T)); returns the shard's loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    with common.autocast(x.device):
        loss = lm_loss(ddp(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here, bucket by bucket (Eq. 2)
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def train(data: torch.Tensor, val: torch.Tensor, vocab: int, cfg: SimpleNamespace, rank: int, world: int,
          device: torch.device, ckpt: str, stop_after: int = 0) -> dict:
    """The timed run: DDP on N ranks, global batch `batch_size`, evaluation and checkpoints every `eval_every` steps;
    `stop_after` > 0 stops it after that many steps, checkpointed."""
    common.enable_tf32()
    torch.manual_seed(cfg.seed)
    model = GPT(vocab, cfg).to(device)
    opt = make_optimizer(model, cfg)
    scaler = common.grad_scaler(device)  # fp16 loss scaling where bf16 is unavailable; a pass-through otherwise
    gen = torch.Generator().manual_seed(cfg.seed)  # the same seed on every rank: the same global batches
    clock, step, history = common.RunClock(device), 0, {"step": [], "train": [], "val": [], "seconds": []}
    loss_sum, n_logged = torch.zeros((), device=device), 0  # summed on the device: no host sync per step
    state = common.load_checkpoint(ckpt, map_location=device, config=vars(cfg), ignore=RESUMABLE) if cfg.resume else None
    if state is not None:  # every rank reads the same file, so all ranks start from the same state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["batch_gen"].cpu())
        step, history, n_logged = state["step"], state["history"], state["n_logged"]
        if rank == 0:  # the global mean losses since the last log, as this many ranks' sum: the next all-reduce adds the rest
            loss_sum = state["mean_loss_sum"].to(device) * world
        clock.load_state_dict(state["clock"])
        say(f"resumed from {os.path.basename(ckpt)} at step {step} ({clock['train']:.0f} s of training)")
    before = clock.state_dict()
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)  # broadcasts rank 0's weights
    start_step = step
    pbar = tqdm(total=cfg.max_steps, initial=step, desc=f"training on {world} ranks", unit="step",
                mininterval=cfg.progress_interval_s, file=sys.stdout, disable=rank != 0)
    while True:
        done = step >= cfg.max_steps
        stopping = step == stop_after and step > start_step and not done
        evaluating = (step % cfg.eval_every == 0 or done) and step not in history["step"]
        if evaluating:
            with clock.span("eval"):
                losses = [estimate_loss(model, d, cfg, rank, world, seed) for d, seed in ((data, 1), (val, 2))]
            for key, value in zip(history, (step, *losses, clock["train"])):
                history[key].append(value)
            if rank == 0:
                tqdm.write(f"step {step:5d} | {clock['train']:6.1f} s | train {losses[0]:.4f} | val {losses[1]:.4f}",
                           file=sys.stdout)
        if evaluating or stopping:
            with clock.span("checkpoint"):
                logged = loss_sum.clone()
                dist.all_reduce(logged)  # every rank's part of the loss since the last log, for rank 0 to save
                save_state(ckpt, model, opt, scaler, gen, {"step": step, "history": history,
                                                           "mean_loss_sum": logged / world,  # any world size resumes it
                                                           "n_logged": n_logged}, clock, cfg)
        if stopping:
            say(f"stopped after step {step} (stop_after_steps): set resume=True to continue")
            break
        if done:
            break
        clock.start("train")
        x, y = (shard(t, rank, world) for t in global_batch(data, cfg, gen))  # (B, T) -> (B/N, T): this rank's rows
        lr = lr_at(step, cfg)
        loss_sum += train_step(ddp, opt, scaler, x, y, lr, cfg)
        step, n_logged = step + 1, n_logged + 1
        pbar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            dist.all_reduce(loss_sum)  # every rank sees the same mean, so a NaN stops all of them together
            mean_loss = loss_sum.item() / (world * n_logged)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"mean loss {mean_loss} over the {n_logged} steps before step {step}")
            loss_sum.zero_()
            n_logged = 0
            pbar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
    clock.stop()
    pbar.close()
    this_run = {k: v - before.get(k, 0.0) for k, v in clock.state_dict().items()}
    return {"history": history, "clock": clock.state_dict(), "clock_this_run": this_run, "steps": step,
            "world_size": world, "precision": common.precision_ran()}  # what the ranks' forward passes ran in


def now(device: torch.device) -> float:
    """Wall-clock time after the device has finished its queued work (benchmarks only; training never waits)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def bench(data: torch.Tensor, vocab: int, cfg: SimpleNamespace, rank: int, world: int, device: torch.device) -> dict:
    """Seconds per step of DDP, and of its parts run one after the other: compute, all-reduce, optimizer."""
    torch.manual_seed(cfg.seed)
    model = GPT(vocab, cfg).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    parts = torch.zeros(4, dtype=torch.float64)  # summed seconds: compute, all-reduce, optimizer, whole DDP step
    for i in range(2 * (cfg.bench_warmup + cfg.bench_steps)):
        split, timed = i % 2 == 0, i // 2 >= cfg.bench_warmup  # alternate a split step and a DDP step
        x, y = (shard(t, rank, world) for t in global_batch(data, cfg, gen))  # (B/N, T) each
        opt.zero_grad(set_to_none=True)
        t0 = now(device)
        if split:
            with ddp.no_sync(), common.autocast(device):  # DDP skips its all-reduce: pure computation
                loss = lm_loss(ddp(x), y)
            loss.backward()
            t1 = now(device)
            flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # every gradient in one (P,) buffer
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in model.parameters():
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))  # a slice of (P,) -> the gradient's shape
                offset += p.numel()
            t2 = now(device)
            optimizer_step(model, opt, cfg)
            if timed:
                parts[:3] += torch.tensor([t1 - t0, t2 - t1, now(device) - t2], dtype=torch.float64)
        else:
            with common.autocast(device):
                loss = lm_loss(ddp(x), y)
            loss.backward()  # DDP all-reduces each bucket as soon as its gradients are ready
            optimizer_step(model, opt, cfg)
            if timed:
                parts[3] += now(device) - t0
    parts = (parts / cfg.bench_steps).to(device)  # NCCL reduces tensors on the GPU only
    dist.all_reduce(parts, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    compute, allreduce, optimizer, ddp_step = parts.tolist()
    return {"world_size": world, "compute_s": compute, "allreduce_s": allreduce, "optimizer_s": optimizer,
            "ddp_step_s": ddp_step, "steps_per_second": 1 / ddp_step,
            "chars_per_second": cfg.batch_size * cfg.block_size / ddp_step, "grad_bytes": flat.numel() * flat.element_size()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", required=True, help="comma-separated, run in this order: checks, bench, train")
    parser.add_argument("--config", required=True, help="the notebook's Config as JSON")
    parser.add_argument("--out", required=True, help="where rank 0 writes its results (JSON)")
    parser.add_argument("--checkpoint", help="the checkpoint file of the train mode")
    parser.add_argument("--stop_after", type=int, default=0, help="stop the train mode after this many steps (0: never)")
    args = parser.parse_args()
    with open(args.config) as f:
        cfg = SimpleNamespace(**json.load(f))
    rank, world, device = setup(cfg)
    train_data, val_data, chars = load_data(device)
    say(f"{world} rank(s), backend {dist.get_backend()}, device {device.type}, {torch.get_num_threads()} thread(s) "
        f"per rank; global batch {cfg.batch_size} = {world} x {cfg.batch_size // world} sequences")
    results = {}
    for mode in args.modes.split(","):
        start = time.perf_counter()
        if mode == "checks":
            with common.fp32_exact():  # exactness checks: no TF32 and no bf16 on a GPU
                results[mode] = checks(train_data, len(chars), cfg, rank, world, device)
        elif mode == "bench":
            results[mode] = bench(train_data, len(chars), cfg, rank, world, device)
        elif mode == "train":
            results[mode] = train(train_data, val_data, len(chars), cfg, rank, world, device, args.checkpoint,
                                  args.stop_after)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        results[mode]["seconds"] = time.perf_counter() - start  # rank 0's wall clock of this mode
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f)
    gc.collect()  # free the DDP and FSDP wrappers (reference cycles) while their process group lives: left to the
    dist.destroy_process_group()  # interpreter's exit, gloo aborted a rank in about 1 run in 6 (torch 2.14, CPU)


if __name__ == "__main__":
    main()
