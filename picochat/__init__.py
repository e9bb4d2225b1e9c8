"""picochat: a complete, hackable ChatGPT-style training stack, from raw text to a chat model.

Read it in pipeline order: common, config, data/ (shards, download, offline, prepare, loader,
conversations, hub, olmo_eval), tokenizer, tokenizer_commands, chat, tasks/, loss, model, optim, stages,
checkpoint, progress, train, perf, calculator, engine, sandbox, evals/ (bpb, core, chat), report, chat_cli,
server (+ ui/index.html), cli.
"""
