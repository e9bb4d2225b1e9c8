"""Hugging Face format: `picochat export` writes a checkpoint as a transformers `nanochat` model directory;
`picochat import` turns such a directory back into a picochat checkpoint.

picochat's GPT is the architecture transformers (5.x) calls `nanochat` (NanoChatForCausalLM): rotary
embeddings, QK-norm after the rotation, parameter-free RMSNorm (one after the embedding too), relu^2 MLP, no
biases, a tanh soft-cap on the logits, grouped-query attention, and a head tied to the embedding (the
default) or not (--tie-embeddings false). So an export is a renaming of the weights plus a config, a
`tokenizers` tokenizer.json with the same split regex, merges and special tokens, a chat template that
renders exactly what the engine prefills, and a model card from the run's own files. Needs the optional
extra: pip install -e '.[hf]'.

    picochat export --source sft --out-dir hf/picochat-d4
    picochat import --hf-dir hf/picochat-d4 --stage sft --home /tmp/other-home
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from picochat.checkpoint import (StageLock, check_vocab, checkpoint_dir, find_checkpoint, save_checkpoint,
                                 set_aside_previous_run)
from picochat.common import UserError, atomic_path, atomic_write_text, picochat_home
from picochat.config import build, option
from picochat.model import GPTConfig
from picochat.stages import STAGES
from picochat.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer, tokenizer_dir

INSTALL_HINT = "pip install -e '.[hf]' (transformers>=5, tokenizers, safetensors, huggingface_hub)"
WEIGHTS_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
# F.rms_norm's default eps for fp32 (torch.finfo(torch.float32).eps): with it transformers' RMSNorm computes
# picochat's norm exactly; the library's default (1e-6) differs in the last bits.
RMS_NORM_EPS = torch.finfo(torch.float32).eps
ROPE_THETA = 10000.0  # model.rotary_tables' base
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def require_hf() -> None:
    """The extra is optional: without it, one line saying how to get it instead of an ImportError."""
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise UserError(f"the Hugging Face format needs {error.name}: {INSTALL_HINT}") from None


# ----------------------------------------------------------------------------------------------------------
# Weights and config: picochat's names and settings <-> NanoChatForCausalLM's

def weight_names(n_layer: int, tied: bool = False) -> dict[str, str]:
    """picochat state_dict name -> transformers name (the same tensors, no transposes). A tied lm_head is
    not written: transformers ties it to embed_tokens on load, as it does on save."""
    names = {"wte.weight": "model.embed_tokens.weight"}
    if not tied:
        names["lm_head.weight"] = "lm_head.weight"
    parts = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
             "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for layer in range(n_layer):
        names.update({f"blocks.{layer}.{ours}.weight": f"model.layers.{layer}.{theirs}.weight"
                      for ours, theirs in parts.items()})
    return names


def hf_config(model_config: dict, bos_id: int, end_id: int) -> dict:
    """NanoChatConfig's fields for a picochat model. Generation stops at <|assistant_end|> (and <|bos|>, as
    the engine does); padding uses <|assistant_end|>, never <|bos|>, which starts every prompt."""
    c = GPTConfig(**model_config)
    return {"vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": 4 * c.n_embd,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
            "max_position_embeddings": c.sequence_len, "hidden_act": "relu2", "attention_dropout": 0.0,
            "rms_norm_eps": RMS_NORM_EPS, "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
            "final_logit_softcapping": c.softcap, "attention_bias": False, "tie_word_embeddings": c.tie_embeddings,
            "bos_token_id": bos_id, "eos_token_id": end_id, "pad_token_id": end_id}


# What a config.json may hold besides NanoChatConfig's fields: bookkeeping, not architecture.
BOOKKEEPING = {"architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
               "use_cache", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id",
               "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
               "is_encoder_decoder", "id2label", "label2id", "problem_type", "tokenizer_class", "rope_theta"}
# field -> (the value picochat's model has, how to say it)
FIXED = {"hidden_act": ("relu2", "a relu^2 MLP"), "attention_bias": (False, "no biases"),
         "attention_dropout": (0.0, "no attention dropout")}


def model_config_from_hf(config: dict, where: Path) -> GPTConfig:
    """A config.json as picochat's GPTConfig, or a one-line refusal naming what picochat's model lacks."""
    def refuse(what: str) -> UserError:
        return UserError(f"{where} names {what}, which picochat's model does not have; not imported")

    if config.get("model_type") != "nanochat":
        raise refuse(f"model_type {config.get('model_type')!r} (picochat imports model_type 'nanochat')")
    known = BOOKKEEPING | set(hf_config(asdict(GPTConfig()), 0, 0)) | {"head_dim"}
    for key in config:
        if key not in known:
            raise refuse(f"{key!r}")
    for key, (value, meaning) in FIXED.items():
        if key in config and config[key] != value:
            raise refuse(f"{key}={config[key]!r} (picochat's has {meaning})")
    return _shape_from_hf(config, refuse)


def _shape_from_hf(config: dict, refuse) -> GPTConfig:
    rope = config.get("rope_parameters") or {"rope_type": "default", "rope_theta": config.get("rope_theta", ROPE_THETA)}
    if rope.get("rope_type", "default") != "default" or rope.get("rope_theta", ROPE_THETA) != ROPE_THETA:
        raise refuse(f"rope_parameters {rope} (picochat's rotary embedding is the default one, theta 10000)")
    softcap = config.get("final_logit_softcapping", 15.0)
    if softcap is None or not 0 < softcap <= 80:
        raise refuse(f"final_logit_softcapping={softcap} (picochat caps logits with a soft-cap in (0, 80])")
    width, heads = config.get("hidden_size", 768), config.get("num_attention_heads", 6)
    if config.get("intermediate_size", 8192) != 4 * width:
        raise refuse(f"intermediate_size={config.get('intermediate_size', 8192)} (picochat's MLP is 4 x {width})")
    if config.get("head_dim", width // heads) * heads != width:
        raise refuse(f"head_dim={config.get('head_dim')} (picochat's heads split the width: {width} / {heads})")
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise refuse(f"num_key_value_heads={kv_heads} that do not divide {heads} heads")
    return GPTConfig(sequence_len=config.get("max_position_embeddings", 2048),
                     vocab_size=config.get("vocab_size", 50304), n_layer=config.get("num_hidden_layers", 12),
                     n_embd=width, n_head=heads, n_kv_head=kv_heads, softcap=float(softcap),
                     tie_embeddings=bool(config.get("tie_word_embeddings", False)))


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: tiktoken ranks <-> a `tokenizers` byte-level BPE with the same split regex and special tokens

def byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges that make a BPE reproduce tiktoken's: every split of a token into two tokens, ranked by the
    token it makes. tiktoken merges the adjacent pair whose concatenation ranks lowest, which is then
    exactly the lowest-ranked merge."""
    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[left], ranks[right], left, right) for left, right in splits]
    return [(left, right) for *_, left, right in sorted(merges)]


def hf_tokenizer(tokenizer: Tokenizer):
    """The same tokenizer as a `tokenizers.Tokenizer`. ignore_merges: a piece that is a whole token is that
    token, as tiktoken does before any merging. Plain text gets a leading <|bos|>, as picochat's documents."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    chars = byte_chars()
    spell = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    ranks = tokenizer.encoding._mergeable_ranks
    merges = [(spell(left), spell(right)) for left, right in bpe_merges(ranks)]
    hf = HFTokenizer(models.BPE({spell(t): r for t, r in ranks.items()}, merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.encoding._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    bos = ("<|bos|>", tokenizer.bos_id)
    hf.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                      special_tokens=[bos])
    return hf


def tokenizer_from_hf(path: Path) -> Tokenizer:
    """A tokenizer.json (picochat's export, or nanochat's tiktoken converted) back as picochat's Tokenizer:
    a byte-level BPE whose ids are the ranks, a Split regex, and picochat's 9 special tokens after the
    ranks; anything else is refused in one line."""
    try:
        spec = json.loads(path.read_text())
        model, vocab = spec["model"], spec["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a readable tokenizer.json ({error})") from None
    if model.get("type") != "BPE" or spec.get("normalizer"):
        raise UserError(f"{path} names a {model.get('type')} model with normalizer {spec.get('normalizer')}, "
                        "which picochat's tokenizer does not have (a byte-level BPE, no normalizer)")
    pattern = split_pattern(spec.get("pre_tokenizer"), path)
    chars = {c: b for b, c in byte_chars().items()}
    try:
        ranks = {bytes(chars[c] for c in token): rank for token, rank in vocab.items()}
    except KeyError as error:
        raise UserError(f"{path} has a token with the character {error}, not a byte-level vocabulary") from None
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["id"] >= len(ranks)}
    if specials != {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}:
        raise UserError(f"{path} names special tokens {sorted(specials, key=specials.get)}; picochat's are "
                        f"{', '.join(SPECIAL_TOKENS)} in that order, after the merges")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path} does not number its {len(ranks)} tokens 0..{len(ranks) - 1}")
    return Tokenizer.from_ranks(ranks, pattern)


def split_pattern(pre_tokenizer: dict | None, path: Path) -> str:
    """The regex of the Split in a byte-level pre-tokenizer (ByteLevel then only maps bytes to characters)."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    splits = [s for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})
              and s.get("behavior") == "Isolated" and not s.get("invert")]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel" and not s.get("use_regex", True)]
    if len(splits) != 1 or len(byte_level) != 1 or len(steps) != 2:
        raise UserError(f"{path} names pre-tokenizer {[s.get('type') for s in steps]}; picochat's tokenizer "
                        "splits with one regex, then maps bytes (Split, ByteLevel without its own regex)")
    return splits[0]["pattern"]["Regex"]


# ----------------------------------------------------------------------------------------------------------
# Chat template: chat.render_for_completion (add_generation_prompt) and render_conversation, in Jinja

# A leading system message folds into the first user turn; roles alternate user/assistant; an assistant's
# content is a list of parts (text, python, python_output) or text whose <<expression=result>> calls are the
# calculator's (chat.TOOL_CALL_TEXT, parsed here with find/rfind: Jinja has no regex). With
# add_generation_prompt, a trailing assistant message is left out and <|assistant_start|> ends the prompt.
CHAT_TEMPLATE = """\
{%- macro call(expression, result) -%}
<|python_start|>{{ expression }}<|python_end|><|output_start|>{{ result }}<|output_end|>
{%- endmacro -%}
{%- macro tool_text(content) -%}
{%- set at = namespace(pos=0) -%}
{%- for i in range(content | length) -%}
{%- if i >= at.pos and content[i:i + 2] == '<<' and content.find('>>', i + 2) >= 0 -%}
{%- set inner = content[i + 2:content.find('>>', i + 2)] -%}
{%- if inner.rfind('=') >= 0 -%}
{{- content[at.pos:i] -}}{{- call(inner[:inner.rfind('=')], inner[inner.rfind('=') + 1:]) -}}
{%- set at.pos = i + 4 + inner | length -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{{- content[at.pos:] -}}
{%- endmacro -%}
{%- set chat = namespace(messages=messages) -%}
{%- if add_generation_prompt and chat.messages and chat.messages[-1]['role'] == 'assistant' -%}
{%- set chat.messages = chat.messages[:-1] -%}
{%- endif -%}
{%- if chat.messages and chat.messages[0]['role'] == 'system' -%}
{%- if chat.messages | length < 2 or chat.messages[1]['role'] != 'user' -%}
{{- raise_exception('a system message must be followed by a user message') -}}
{%- endif -%}
{%- set merged = chat.messages[0]['content'] + '\\n\\n' + chat.messages[1]['content'] -%}
{%- set chat.messages = [{'role': 'user', 'content': merged}] + chat.messages[2:] -%}
{%- endif -%}
<|bos|>
{%- for message in chat.messages -%}
{%- set expected = ['user', 'assistant'][loop.index0 % 2] -%}
{%- if message['role'] != expected -%}
{{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~ ', expected ' ~ expected) -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
<|user_start|>{{ message['content'] }}<|user_end|>
{%- else -%}
<|assistant_start|>
{%- if message['content'] is string -%}
{{- tool_text(message['content']) -}}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}{{- part['text'] -}}
{%- elif part['type'] == 'python' -%}<|python_start|>{{ part['text'] }}<|python_end|>
{%- elif part['type'] == 'python_output' -%}<|output_start|>{{ part['text'] }}<|output_end|>
{%- else -%}{{- raise_exception('unknown assistant part type ' ~ part['type']) -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
<|assistant_end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}
"""


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path, context: int) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template) as AutoTokenizer loads them."""
    from transformers import PreTrainedTokenizerFast

    end = "<|assistant_end|>"
    wrapped = PreTrainedTokenizerFast(tokenizer_object=hf_tokenizer(tokenizer), bos_token="<|bos|>", eos_token=end,
                                      pad_token=end, model_max_length=context, chat_template=CHAT_TEMPLATE,
                                      clean_up_tokenization_spaces=False)
    wrapped.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------------------
# Export

@dataclass
class ExportConfig:
    out_dir: str = option("", "the directory to write (AutoModelForCausalLM.from_pretrained loads it)",
                          positional=True)
    source: str = option("sft", "which stage's checkpoint to export", choices=tuple(STAGES))
    step: int = option(0, "checkpoint step to export (0: the newest good one)")
    force: bool = option(False, "replace what is in --out-dir")
    push_to_hub: str = option("", "also upload the directory to this Hub repository (user/name); honours "
                                  "HF_ENDPOINT and HF_TOKEN")
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    def __post_init__(self):
        if not self.out_dir:
            raise UserError("give the directory to write: picochat export --out-dir DIR")


def export(args) -> Path:
    """`picochat export`: a stage's checkpoint as a transformers model directory (and maybe the Hub)."""
    config = build(ExportConfig, args)
    require_hf()
    home, out_dir = picochat_home(config.home or None), Path(config.out_dir)
    stage, path, checkpoint = find_checkpoint(home, config.source, config.step)
    tokenizer = load_tokenizer(home)
    check_vocab(tokenizer, checkpoint, path)
    prepare_out_dir(out_dir, config.force)
    step = checkpoint["train_state"]["step"]
    write_weights(checkpoint, out_dir / WEIGHTS_FILE, {"picochat_stage": stage, "picochat_step": str(step)})
    write_configs(checkpoint["model_config"], tokenizer, out_dir)
    write_tokenizer(tokenizer, out_dir, checkpoint["model_config"]["sequence_len"])
    atomic_write_text(out_dir / "README.md", model_card(home, stage, checkpoint, config.push_to_hub or str(out_dir)))
    print(f"exported {stage} step {step} ({path}) to {out_dir}")
    if config.push_to_hub:
        push(out_dir, config.push_to_hub, f"picochat {stage} step {step}")
    return out_dir


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """A non-empty directory is refused without --force: an export must not mix with other files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; give a directory to export to")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} is not empty; give an empty or new directory, or --force to replace it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def write_weights(checkpoint: dict, path: Path, metadata: dict) -> None:
    """model.safetensors in transformers' names, written here with sorted keys: safetensors' own writer
    orders metadata by a hash seeded per process, and an export must be the same bytes each time (export
    -> import -> export is byte-identical)."""
    c = GPTConfig(**checkpoint["model_config"])
    names = weight_names(c.n_layer, c.tie_embeddings)
    state = dict(checkpoint["model"])
    if c.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    if set(state) != set(names):
        raise UserError(f"the checkpoint's weights ({len(state)}) are not picochat's GPT's ({len(names)})")
    tensors = sorted((names[name], tensor.detach().contiguous()) for name, tensor in state.items())
    header, offset = {"__metadata__": {"format": "pt", **metadata}}, 0
    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _, tensor in tensors:
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def write_configs(model_config: dict, tokenizer: Tokenizer, out_dir: Path) -> None:
    """config.json (NanoChatForCausalLM) and generation_config.json, through transformers' own classes."""
    from transformers import GenerationConfig, NanoChatConfig

    end = tokenizer.special("<|assistant_end|>")
    config = NanoChatConfig(**hf_config(model_config, tokenizer.bos_id, end))
    config.architectures = ["NanoChatForCausalLM"]
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    # The engine stops on <|bos|> too: a model that starts a new document has finished its answer.
    GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=[end, tokenizer.bos_id], pad_token_id=end,
                     do_sample=False).save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------------------
# Model card: how the model was trained, from the run's own files (done.json, metrics, evals/*.json)

def model_card(home: Path, stage: str, checkpoint: dict, where: str) -> str:
    """README.md: what the model is, how to load it (from `where`: the Hub repository or the directory),
    its stages' training record and the evals run on them."""
    from picochat.report import Files, evals_section, read_stage

    c, step = GPTConfig(**checkpoint["model_config"]), checkpoint["train_state"]["step"]
    files = Files(home)
    names = list(STAGES)[:list(STAGES).index(stage) + 1]  # the stages this model went through
    runs = [run for run in (read_stage(files, name) for name in names) if run.done or run.steps]
    params = sum(t.numel() for t in checkpoint["model"].values())
    front = ("---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- picochat\n- nanochat\n"
             "---\n\n")
    intro = (f"# picochat {stage} model, depth {c.n_layer}\n\nA {params / 1e6:,.1f}M-parameter chat model "
             f"trained with picochat ({stage} stage, checkpoint step {step:,}), in "
             "transformers' `nanochat` format: `AutoModelForCausalLM` and `AutoTokenizer` load it with no "
             "custom code.")
    shape = (f"## Model\n\n{c.n_layer} layers, width {c.n_embd}, {c.n_head} heads ({c.n_kv_head} key/value), "
             f"vocabulary {c.vocab_size:,}, context {c.sequence_len:,} tokens; rotary embeddings, QK-norm, "
             f"parameter-free RMSNorm, relu^2 MLP, {'tied' if c.tie_embeddings else 'untied'} head, logits "
             f"soft-capped at {c.softcap:g}.")
    evals = (evals_section(runs, {}) if any(run.evals for run in runs) else
             "## Evals\n\nNo evals were run on this model's stages (`picochat eval` writes evals/*.json).")
    sections = [intro, shape, usage_section(where), training_section(runs, checkpoint), evals]
    return front + "\n\n".join(section.strip() for section in sections) + "\n"


def usage_section(where: str) -> str:
    text = """## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(WHERE)
model = AutoModelForCausalLM.from_pretrained(WHERE)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 * 7?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

The chat template renders exactly the tokens picochat's engine feeds the model. picochat's engine runs a
calculator when the model writes `<|python_start|>expression<|python_end|>` and forces the result in between
`<|output_start|>` and `<|output_end|>`; `generate()` does not, so tool-using answers continue from the
model's own guess of the result. Plain text encodes with a leading `<|bos|>`, as in pretraining."""
    return text.replace("WHERE", json.dumps(where))


def training_section(runs: list, checkpoint: dict) -> str:
    """One row per stage from its done.json (or its last metrics row, if it did not finish)."""
    from picochat.report import duration, fmt, table

    if "imported" in checkpoint:
        return f"## Training\n\nImported into picochat from {checkpoint['imported']['from']}; no training record."
    if not runs:
        return "## Training\n\nNo training record (done.json or metrics.jsonl) was found for this model's stages."
    rows = [[r.name, r.status, fmt(r.final.get("step"), ","), fmt(r.final.get("tokens"), ","),
             duration(r.final.get("train_seconds")), fmt(r.val_bpb, ".4f"), fmt(r.final.get("pretrain_val_bpb"), ".4f")]
            for r in runs]
    config = checkpoint.get("config") or {}
    device = f"{config.get('device', '?')}, {config.get('dtype', '?')}"
    text = table(["stage", "status", "steps", "tokens", "training", "val bpb", "pretraining val bpb"], rows, 2)
    return (f"## Training\n\nEach stage starts from the one before it (base pretraining, mid-training, SFT, RL). "
            f"From the run's checkpoints/<stage>/done.json and metrics.jsonl; device and dtype of the exported "
            f"stage: {device}.\n\n{text}")


# ----------------------------------------------------------------------------------------------------------
# Import

@dataclass
class ImportConfig:
    hf_dir: str = option("", "a transformers `nanochat` model directory (picochat's export, or nanochat's)",
                         positional=True)
    stage: str = option("sft", "the stage whose checkpoint it becomes (the next stage trains from it)",
                        choices=tuple(STAGES))
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")

    def __post_init__(self):
        if not self.hf_dir:
            raise UserError("give the directory to import: picochat import --hf-dir DIR")


def import_model(args) -> Path:
    """`picochat import`: a transformers nanochat directory as checkpoints/<stage>/step_N.pt, with its
    tokenizer as the home's (refused if the home already has another)."""
    config = build(ImportConfig, args)
    require_hf()
    home, hf_dir = picochat_home(config.home or None), Path(config.hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"{hf_dir} has no config.json: not a transformers model directory")
    model_config = model_config_from_hf(json.loads((hf_dir / "config.json").read_text()), hf_dir / "config.json")
    tokenizer = tokenizer_from_hf(hf_dir / "tokenizer.json")
    if tokenizer.vocab_size != model_config.vocab_size:
        raise UserError(f"{hf_dir}'s tokenizer has {tokenizer.vocab_size:,} tokens, its model "
                        f"{model_config.vocab_size:,}")
    state, metadata = read_weights(hf_dir, model_config)
    step = int(metadata.get("picochat_step", 0))
    install_tokenizer(tokenizer, home)
    directory = checkpoint_dir(home, config.stage)
    with StageLock(directory):
        set_aside_previous_run(directory)  # moved aside, never deleted, as a fresh training run does
        path = save_checkpoint(directory, step, imported_payload(state, model_config, tokenizer, step, hf_dir,
                                                                 config.stage), keep_last=1)
    print(f"imported {hf_dir} as {config.stage} step {step}: {path}")
    return path


def read_weights(hf_dir: Path, model_config: GPTConfig) -> tuple[dict, dict]:
    """picochat's state_dict (fp32, as picochat trains) from model.safetensors or its shards, and the first
    file's metadata; a tensor picochat's model lacks, or one it needs that is missing, is refused by name."""
    from safetensors import safe_open

    index = hf_dir / INDEX_FILE
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS_FILE]
    if not all((hf_dir / shard).is_file() for shard in shards):
        raise UserError(f"{hf_dir} has no {WEIGHTS_FILE} (or shards named in {INDEX_FILE}): only safetensors "
                        "weights are imported")
    ours = {theirs: name for name, theirs in weight_names(model_config.n_layer).items()}
    state, metadata = {}, {}
    for shard in shards:
        with safe_open(str(hf_dir / shard), framework="pt") as f:
            metadata = metadata or (f.metadata() or {})
            for key in f.keys():
                if key not in ours:
                    raise UserError(f"{hf_dir / shard} holds {key!r}, which picochat's model does not have; "
                                    "not imported")
                state[ours[key]] = f.get_tensor(key).float()
    missing = sorted(set(weight_names(model_config.n_layer, model_config.tie_embeddings)) - set(state))
    if missing:
        raise UserError(f"{hf_dir} lacks {len(missing)} weight(s) picochat's model needs, e.g. {missing[0]!r}")
    if model_config.tie_embeddings:  # one tensor under both names, as a tied model's state_dict has it
        if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["wte.weight"]):
            raise UserError(f"{hf_dir}'s config ties the embeddings, but its lm_head.weight differs from "
                            "embed_tokens; not imported")
        state["lm_head.weight"] = state["wte.weight"]
    check_shapes(state, model_config, hf_dir)
    return state, metadata


def check_shapes(state: dict, model_config: GPTConfig, where: Path) -> None:
    from picochat.model import GPT

    with torch.device("meta"):  # shapes only: no memory, no init
        expected = {name: tuple(t.shape) for name, t in GPT(model_config).state_dict().items()}
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise UserError(f"{where}: {name} is {tuple(tensor.shape)}, the config makes it {expected[name]}")


def install_tokenizer(tokenizer: Tokenizer, home: Path) -> None:
    """The home's tokenizer becomes the model's: every command reads the tokenizer from the home. A home
    with another tokenizer would misread the model's ids (and its other checkpoints'), so it is refused."""
    directory = tokenizer_dir(home)
    try:
        have = load_tokenizer(home)
    except UserError:
        have = None
    if have is not None and have.fingerprint() != tokenizer.fingerprint():
        raise UserError(f"{directory} holds another tokenizer than the model's; import into a new --home")
    if have is None:
        tokenizer.save(directory, imported=True)


def imported_payload(state: dict, model_config: GPTConfig, tokenizer: Tokenizer, step: int, hf_dir: Path,
                     stage: str) -> dict:
    """A checkpoint that chat, serve, eval and the next stage's training load. It has no optimizer or loader
    state, so it starts a run (the next stage) but cannot be resumed."""
    from picochat.train import TrainState

    return {"model": state, "model_config": asdict(model_config), "train_state": asdict(TrainState(step=step)),
            "fingerprints": {"tokenizer": tokenizer.fingerprint()}, "stage": stage,
            "imported": {"from": str(hf_dir.resolve())}}


# ----------------------------------------------------------------------------------------------------------
# The Hub

def push(out_dir: Path, repo: str, message: str) -> None:
    """Upload an export through huggingface_hub, which reads HF_ENDPOINT and HF_TOKEN itself."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(out_dir), repo_id=repo, repo_type="model", commit_message=message)
    except (HfHubHTTPError, OSError) as error:
        raise UserError(f"upload to {repo} failed: {str(error).splitlines()[0][:200]}") from None
    print(f"pushed {out_dir} to {getattr(info, 'commit_url', repo)}")
