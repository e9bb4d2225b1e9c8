"""picochat: a complete, hackable ChatGPT-style training stack, from raw text to a chat model.

Reading order, the core path first:
  1. model (the Transformer), loss (fused lm_head + cross-entropy), optim (Muon + AdamW, the LR schedule)
  2. step (one optimizer step: micro-batches, gradient sums over ranks), train (the config and the loop)
  3. engine (generation with a KV cache and the calculator tool: chat, serve, evals and RL use it)
Then what the loop eats: tokenizer, data/loader (pretraining batches), chat (the chat template),
data/conversations (mid/SFT batches), tasks/, stages (what each stage does differently), rl.
Then how it is judged: evals/ (bpb, core, chat, rerun), sandbox, report; and how people use it: chat_cli,
server (+ ui/index.html).
Then the plumbing: config (flags from dataclasses), cli, common, runtime (device, dtype, ranks, DDP,
compile), checkpoint (save, resume, load), progress (metrics, signals), perf (MFU), calculator,
tokenizer_commands, data/ (prepare, shards, offline, download, fetch, hub, olmo_eval).
"""
