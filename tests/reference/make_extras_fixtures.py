#!/usr/bin/env python3
"""make_extras_fixtures.py - reference values for LLaMA-Factory's
self-contained extras in ft-train (docs/EXTRAS.md).

Run from the repository root, with the badam (1.4), adam-mini (1.1.1) and
galore-torch (1.0) packages (pure Python) on the path:
    pip install --no-deps --target /tmp/badam_pkg badam adam-mini galore-torch
    PYTHONHASHSEED=0 PYTHONPATH=/tmp/badam_pkg /work/venv/bin/python tests/reference/make_extras_fixtures.py
(PYTHONHASHSEED fixes the order PEFT writes target_modules in.)
    /work/venv/bin/python tests/reference/make_extras_fixtures.py --check-pissa DIR
        DIR is an ft-train --pissa_init --pissa_iter -1 --pissa_convert output
        on tiny-llama (the exact SVD: PEFT's pissa_niter_K draws a new random
        start each time it loads an adapter, so only "pissa" recomputes):
        PEFT loads DIR (redoing the PiSSA init on the base, as for its own
        adapters) and DIR/pissa_converted (a plain LoRA on the original
        base); their logits on the parity batch 0 must agree (max relative
        error <= 1e-4) and differ from the base's.  Exit 1 if not.
    /work/venv/bin/python tests/reference/make_extras_fixtures.py --pissa-dora
        only the DoRA+PiSSA files below (torch, transformers and PEFT alone)
Writes tests/fixtures/extras/:
  neftune.txt     "<alpha> <T> <D> <mag>": mag_norm as transformers'
                  neftune_post_forward_hook computes it (float32, hex), and
                  "max <alpha> <T> <D> <max |noise|>" from the hook itself on
                  zeros (the noise stays within mag)
  llama_pro.txt   "<num_layers> <freeze_trainable_layers> <ids...>": the
                  trainable layer ids of LLaMA-Factory's _setup_freeze_tuning
                  with use_llama_pro (model/adapter.py)
  losses.txt      "<run> <loss per step...>" for the 10-step runs of
                  tests/fixtures/parity/README.md (20 micro-batches of the
                  llama parity batches, accumulation 2, cosine with 2 warmup
                  steps, clipping at 1.0, weight_decay 0.1) with:
    loraplus      LoRA from parity/llama-lora-init, lr 2e-3, LoRA+ ratio 16:
                  the param groups of LLaMA-Factory's _create_loraplus_optimizer
    badam_asc3    full, lr 1e-3, badam.BlockOptimizer as LLaMA-Factory's
                  _create_badam_optimizer makes it (layer mode, ascending,
                  switch_block_every 3)
    badam_desc4   the same, descending, every 4
    badam_fixed3  the same, fixed, every 3, start_block 1
    pissa         LoRA r=4, alpha 8, all linears, lr 2e-3, PEFT's init_lora_weights
                  "pissa" (exact SVD)
    pissa_niter4, pissa_niter16  the same with "pissa_niter_4" / "_16"
                  (torch.svd_lowrank from torch's random start)
    dora          DoRA from llama-dora-init/ (written here: PEFT's use_dora
                  init on all seven linears, r=4, alpha 8, then lora_B =
                  0.1 N(0,1)), lr 2e-3
    muon_full     full, lr 1e-3, LLaMA-Factory's third_party Muon (its own
                  file, LF_SRC=/work/lf/src by default) as _create_muon_optimizer
    muon_lora     LoRA from parity/llama-lora-init, lr 2e-3, the same
    adam_mini_full, adam_mini_freeze  full / last layer, lr 1e-3, the
                  adam_mini package's Adam_mini as _create_adam_mini_optimizer
    galore_full   full, lr 1e-3, galore_torch's GaLoreAdamW as
                  _create_galore_optimizer: all linears, rank 4, update
                  interval 200 (the default: one projection in 10 steps),
                  scale 2.0, std
    galore_freeze last layer, galore_target mlp, rank 8, interval 200,
                  scale 0.5, proj_type right
    galore_reproj galore_full with update interval 3 (new projections at
                  steps 3, 6, 9: the moments carry over, so the singular
                  vectors' signs, LAPACK's choice, matter from there on)
  llama-dora-init/  that PEFT adapter (adapter_config.json use_dora true,
                  lora_magnitude_vector tensors)
  llama-dora-merged.safetensors  PEFT's merge_and_unload of it: layer 0's
                  q_proj and layer 1's down_proj weights
  pissa_dora_losses.txt  "pissa_dora <loss per step...>": the pissa run
                  with use_dora (PEFT runs the PiSSA init, then DoRA's:
                  magnitude ||W_res + s B A||)
  llama-pissa-dora-merged.safetensors  PEFT's from_pretrained (the PiSSA
                  init redone on the original base) and merge_and_unload of
                  llama-pissa-dora/, an adapter ft made (layer 0's q_proj and
                  layer 1's down_proj), from the repository root:
                    ft-cat --encode < tests/fixtures/trainer/train.jsonl > /tmp/t.zst
                    ft-train --model_name_or_path tests/fixtures/models/tiny-llama
                      --train /tmp/t.zst --output_dir /tmp/pd --use_dora --pissa_init
                      --pissa_iter -1 --lora_rank 4 --lora_alpha 8 --lora_target all
                      --learning_rate 1e-2 --max_steps 4
                  and its adapter_config.json and adapter_model.safetensors
                  copied there
Made with torch 2.15.0, transformers 5.24.0, peft 0.21.2, badam 1.4 (CPU,
float32, 1 thread), adam-mini 1.1.1.
"""
import os
import sys
import torch
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup
from transformers.integrations.neftune import neftune_post_forward_hook
from peft import PeftModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import (build_from, loss_sum, decay_names, random_lora_b,  # noqa: E402
                                 STEPS, ACCUM, WARMUP, MAX_GRAD_NORM, BETAS, EPS,
                                 WEIGHT_DECAY)

torch.set_num_threads(1)
OUT = "tests/fixtures/extras"
MODEL = "tests/fixtures/models/tiny-llama"
PARITY = "tests/fixtures/parity"


def hx(x):
    return float(x).hex()


def neftune():
    lines = []
    for alpha, t, d in [(5.0, 16, 64), (5.0, 2048, 4096), (0.1, 7, 3), (15.0, 512, 896)]:
        dims = torch.tensor(t * d)
        mag = alpha / torch.sqrt(dims)
        lines.append(f"{alpha!r} {t} {d} {hx(mag)}")

    class Emb(torch.nn.Module):
        pass
    mod = Emb()
    mod.neftune_noise_alpha = 5.0
    mod.train()
    torch.manual_seed(0)
    for t, d in [(16, 64), (8, 32)]:
        out = neftune_post_forward_hook(mod, None, torch.zeros(4, t, d))
        lines.append(f"max 5.0 {t} {d} {hx(out.abs().max())}")
    with open(os.path.join(OUT, "neftune.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def llama_pro():
    lines = []
    for n_layers, n in [(8, 2), (8, 8), (32, 8), (40, 8), (4, 1), (2, 1), (4, 2)]:
        stride = n_layers // n
        ids = list(range(stride - 1, n_layers + stride - 1, stride))
        lines.append(f"{n_layers} {n} " + " ".join(map(str, ids)))
    with open(os.path.join(OUT, "llama_pro.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def batches():
    t = load_file(os.path.join(PARITY, "llama-train-batches.safetensors"))
    out = []
    i = 0
    while f"batch.{i}.input_ids" in t:
        out.append((t[f"batch.{i}.input_ids"], t[f"batch.{i}.labels"]))
        i += 1
    return out


def token_mean(m, ids, lab, ntok):
    """transformers' loss of a micro-batch: the token sum over the step's
    label count, as backward() gets it and as the step's logged loss adds
    it (the float sum over ntok in double, as before)"""
    ls, _ = loss_sum(m(input_ids=ids.long()).logits, lab)
    return ls / ntok, float(ls) / ntok


def run(m, named, opt, sch, bs, norms=None, micro=token_mean):
    """transformers' inner loop: accumulate, clip the params that have a
    gradient (BAdam's frozen ones have none), step, schedule, zero.  The
    clipped norms go to `norms` when given; micro(m, ids, lab, ntok) gives
    a micro-batch's loss to backward and the value the step's loss adds
    (LLaMA-Factory's loss functions: make_sftloss and make_asft_fixtures)."""
    m.train()
    losses = []
    for step in range(STEPS):
        mb = bs[step * ACCUM:(step + 1) * ACCUM]
        ntok = sum(int((lab[:, 1:] != -100).sum()) for _, lab in mb)
        tot = 0.0
        for ids, lab in mb:
            loss, logged = micro(m, ids, lab, ntok)
            loss.backward()
            tot += logged
        gn = torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.grad is not None], MAX_GRAD_NORM)
        opt.step()
        sch.step()
        m.zero_grad(set_to_none=False)
        losses.append(tot)
        if norms is not None:
            norms.append(float(gn))
    return losses


def adamw_run(m, lr, bs, micro=token_mean):
    """run() under LLaMA-Factory's default optimizer: torch AdamW with
    transformers' decay groups, cosine schedule with warmup; returns the
    losses and the clipped gradient norms per step."""
    decay = decay_names(m)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    norms = []
    losses = run(m, named, opt, sch, bs, norms, micro)
    return losses, norms


def loraplus(bs):
    base = build_from(MODEL, "llama")
    m = PeftModel.from_pretrained(base, os.path.join(PARITY, "llama-lora-init"), is_trainable=True)
    lr, ratio, emb_lr = 2e-3, 16.0, 1e-6
    decay = decay_names(m)
    g = {"lora_a": [], "lora_b": [], "lora_b_nodecay": [], "embedding": []}
    for n, p in m.named_parameters():   # as _create_loraplus_optimizer
        if not p.requires_grad:
            continue
        if "lora_embedding_B" in n:
            g["embedding"].append(p)
        elif "lora_B" in n or p.ndim == 1:
            g["lora_b" if n in decay else "lora_b_nodecay"].append(p)
        else:
            g["lora_a"].append(p)
    groups = [dict(params=g["lora_a"], lr=lr, weight_decay=WEIGHT_DECAY),
              dict(params=g["lora_b"], lr=lr * ratio, weight_decay=WEIGHT_DECAY),
              dict(params=g["lora_b_nodecay"], lr=lr * ratio, weight_decay=0.0),
              dict(params=g["embedding"], lr=emb_lr, weight_decay=WEIGHT_DECAY)]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs)


def pissa(bs, init, use_dora=False):
    """LoRA r=4, alpha 8 on all seven linears, initialised by PEFT's PiSSA
    (with use_dora: then DoRA's magnitudes, ||W_res + s B A||, as
    LoraLayer.update_layer runs the two inits)."""
    from peft import LoraConfig, get_peft_model
    base = build_from(MODEL, "llama")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=init, bias="none",
                     use_dora=use_dora,
                     task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(base, cfg)
    return adamw_run(m, 2e-3, bs)[0]


def dora(bs):
    """DoRA r=4, alpha 8 on all seven linears: PEFT's init (magnitude ||W||),
    then lora_B = 0.1 N(0, 1) so the norm and the magnitude differ from the
    first step; saved as the starting adapter ft-train loads."""
    from peft import LoraConfig, get_peft_model
    base = build_from(MODEL, "llama")
    torch.manual_seed(5)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, bias="none",
                     task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(base, cfg)
    random_lora_b(m, 6)
    m.save_pretrained(os.path.join(OUT, "llama-dora-init"))
    # PEFT's merge of that adapter (DoraLinearVariant.merge_safe), two modules
    merged = PeftModel.from_pretrained(build_from(MODEL, "llama"),
                                       os.path.join(OUT, "llama-dora-init")).merge_and_unload()
    sd = merged.state_dict()
    keep = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    save_file({k: sd[k].contiguous() for k in keep}, os.path.join(OUT, "llama-dora-merged.safetensors"))
    return adamw_run(m, 2e-3, bs)[0]


def pissa_dora(bs):
    """pissa_dora_losses.txt and llama-pissa-dora-merged.safetensors (a file
    of their own: losses.txt needs every package above to regenerate, and
    its lines stay as they are)."""
    losses = pissa(bs, "pissa", use_dora=True)
    with open(os.path.join(OUT, "pissa_dora_losses.txt"), "w") as f:
        f.write("pissa_dora " + " ".join(repr(x) for x in losses) + "\n")
    print("pissa_dora", [round(x, 5) for x in losses])
    # PEFT's merge of ft's DoRA+PiSSA adapter into the original base:
    # from_pretrained redoes the PiSSA init (the base becomes W_res), then
    # merge_and_unload applies DoRA on W_res + s B A
    merged = PeftModel.from_pretrained(build_from(MODEL, "llama"),
                                       os.path.join(OUT, "llama-pissa-dora")).merge_and_unload()
    sd = merged.state_dict()
    keep = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    save_file({k: sd[k].contiguous() for k in keep}, os.path.join(OUT, "llama-pissa-dora-merged.safetensors"))


def lf_muon():
    """LLaMA-Factory's own Muon (src/llamafactory/third_party/muon/muon.py),
    loaded as a file so the package's dependencies are not needed."""
    import importlib.util
    path = os.environ.get("LF_SRC", "/work/lf/src") + "/llamafactory/third_party/muon/muon.py"
    spec = importlib.util.spec_from_file_location("lf_muon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Muon


def muon(bs, mode):
    """_create_muon_optimizer: Muon for 2-D params outside embed/lm_head."""
    if mode == "lora":
        m = PeftModel.from_pretrained(build_from(MODEL, "llama"), os.path.join(PARITY, "llama-lora-init"),
                                      is_trainable=True)
        lr = 2e-3
    else:
        m = build_from(MODEL, "llama")
        lr = 1e-3
    mu, aw = [], []
    for n, p in m.named_parameters():
        if p.requires_grad:
            (mu if p.ndim == 2 and "embed" not in n and "lm_head" not in n else aw).append(p)
    opt = lf_muon()(lr=lr, wd=WEIGHT_DECAY, muon_params=mu, adamw_params=aw, adamw_betas=BETAS,
                    adamw_eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs)


def adam_mini(bs, mode):
    """_create_adam_mini_optimizer: the adam_mini package (1.1.1) over all
    trainable params with the model's hidden_size and head counts."""
    from adam_mini import Adam_mini
    m = build_from(MODEL, "llama")
    if mode == "freeze":
        last = m.config.num_hidden_layers - 1
        for n, p in m.named_parameters():
            p.requires_grad_(f".layers.{last}." in n)
    opt = Adam_mini(named_parameters=m.named_parameters(), lr=1e-3, betas=BETAS, eps=EPS,
                    weight_decay=WEIGHT_DECAY, model_sharding=False, dim=m.config.hidden_size,
                    n_heads=m.config.num_attention_heads, n_kv_heads=m.config.num_key_value_heads,
                    verbose=False)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs)


def galore(bs, mode, targets, rank, gap, scale, proj):
    """_create_galore_optimizer (not layerwise) with galore_torch's
    GaLoreAdamW: the 2-D weights of the nn.Linear modules named by targets
    get the projection, every trainable param the same AdamW."""
    from galore_torch import GaLoreAdamW
    m = build_from(MODEL, "llama")
    if mode == "freeze":
        last = m.config.num_hidden_layers - 1
        for n, p in m.named_parameters():
            p.requires_grad_(f".layers.{last}." in n)
    lin = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    tg = lin if targets == "all" else targets.split(",")
    gp = []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(t in name for t in tg):
            gp += [p for p in mod.parameters() if p.requires_grad and p.ndim > 1]
    ids = {id(p) for p in gp}
    decay = decay_names(m)
    dp = [p for n, p in m.named_parameters() if p.requires_grad and id(p) not in ids and n in decay]
    ndp = [p for n, p in m.named_parameters() if p.requires_grad and id(p) not in ids and n not in decay]
    groups = [dict(params=ndp, weight_decay=0.0), dict(params=dp, weight_decay=WEIGHT_DECAY),
              dict(params=gp, weight_decay=WEIGHT_DECAY, rank=rank, update_proj_gap=gap, scale=scale,
                   proj_type=proj)]
    opt = GaLoreAdamW(groups, lr=1e-3, betas=BETAS, eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs)


def badam(bs, mode, every, start=None):
    from badam import BlockOptimizer
    m = build_from(MODEL, "llama")
    decay = decay_names(m)
    dp = [p for n, p in m.named_parameters() if p.requires_grad and n in decay]
    ndp = [p for n, p in m.named_parameters() if p.requires_grad and n not in decay]
    # _create_badam_optimizer: AdamW with LLaMA-Factory's groups and the
    # Trainer's kwargs (lr, betas, eps: no weight_decay, so the defaults
    # hold torch's 0.01)
    base = torch.optim.AdamW([dict(params=ndp, weight_decay=0.0),
                              dict(params=dp, weight_decay=WEIGHT_DECAY)],
                             lr=1e-3, betas=BETAS, eps=EPS)
    opt = BlockOptimizer(base_optimizer=base, named_parameters_list=list(m.named_parameters()),
                         block_prefix_list=None, switch_block_every=every, start_block=start,
                         switch_mode=mode, verbose=0)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs)


def check_pissa(d):
    t = load_file(os.path.join(PARITY, "llama-train-batches.safetensors"))
    ids = t["batch.0.input_ids"].long()
    out = {}
    for a in (d, os.path.join(d, "pissa_converted")):
        m = PeftModel.from_pretrained(build_from(MODEL, "llama"), a).eval()
        with torch.no_grad():
            out[a] = m(input_ids=ids).logits
    with torch.no_grad():
        base = build_from(MODEL, "llama").eval()(input_ids=ids).logits
    p, c = out.values()
    err = float((p - c).abs().max() / p.abs().max())
    moved = float((p - base).abs().max())
    print(f"pissa vs converted: max relative error {err:.3g}; vs the base {moved:.3g}")
    return 0 if err <= 1e-4 and moved > 1e-3 else 1


def main():
    os.makedirs(OUT, exist_ok=True)
    neftune()
    llama_pro()
    bs = batches()
    runs = [("loraplus", loraplus(bs)),
            ("badam_asc3", badam(bs, "ascending", 3)),
            ("badam_desc4", badam(bs, "descending", 4)),
            ("badam_fixed3", badam(bs, "fixed", 3, 1)),
            ("pissa", pissa(bs, "pissa")),
            ("pissa_niter4", pissa(bs, "pissa_niter_4")),
            ("pissa_niter16", pissa(bs, "pissa_niter_16")),
            ("dora", dora(bs)),
            ("muon_full", muon(bs, "full")),
            ("muon_lora", muon(bs, "lora")),
            ("adam_mini_full", adam_mini(bs, "full")),
            ("adam_mini_freeze", adam_mini(bs, "freeze")),
            ("galore_full", galore(bs, "full", "all", 4, 200, 2.0, "std")),
            ("galore_freeze", galore(bs, "freeze", "mlp", 8, 200, 0.5, "right")),
            ("galore_reproj", galore(bs, "full", "all", 4, 3, 2.0, "std"))]
    with open(os.path.join(OUT, "losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])
    pissa_dora(bs)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-pissa":
        sys.exit(check_pissa(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "--pissa-dora":
        pissa_dora(batches())
        sys.exit(0)
    main()
