"""The CLI is generated from the workflow configs: every option has a flag and a help line, today's
finetune flags keep working, and parsed flags make the same config the Python API builds."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from gencycle.cli import finetune as finetune_cli
from gencycle.cli.options import add_config_arguments, config_from_args, flag
from gencycle.workflows import FinetuneConfig, LoraConfig, PromptTuningConfig, TrainConfig, options, override
from gencycle.workflows.config import field_help

# `gencycle finetune --help` before its flags were generated from the configs (issue 11)
TODAYS_FLAGS = {
    "--help", "--data", "--method", "--out", "--template", "--chat-template", "--no-chat-template", "--eval-data",
    "--test-data", "--general-text", "--rouge-examples", "--max-new-tokens", "--max-length", "--packing",
    "--no-packing", "--lora-rank", "--lora-alpha", "--lora-dropout", "--target", "--num-virtual-tokens",
    "--prompt-init", "--prompt-init-text", "--epochs", "--max-steps", "--lr", "--batch-size", "--grad-accum",
    "--warmup-steps", "--schedule", "--weight-decay", "--max-grad-norm", "--eval-every", "--checkpoint-every",
    "--resume", "--no-resume", "--seed", "--precision", "--strategy", "--device", "--dtype", "--progress",
    "--no-progress",
}
# TrainConfig fields the hand-listed CLI did not reach; generated, every field has its flag
NEW_FLAGS = {"--betas", "--min-lr-ratio", "--shuffle", "--no-shuffle", "--eval-batch-size", "--keep-checkpoints"}


@pytest.fixture(scope="module")
def parser():
    subparsers = argparse.ArgumentParser(prog="gencycle").add_subparsers()
    finetune_cli.register(subparsers)
    return subparsers.choices["finetune"]


def _actions(parser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_finetune_keeps_todays_flags(parser):
    assert set(_actions(parser)) == TODAYS_FLAGS | NEW_FLAGS


def _configs(config, skip=()):
    """(config class, field, skipped) for every field of the config tree."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _configs(value, f.metadata.get("set_by_workflow", ()))
        else:
            yield type(config), f.name, f.name in skip


def test_every_config_field_has_a_flag_and_a_help_line(parser):
    actions, seen = _actions(parser), 0
    for cls, name, set_by_workflow in _configs(FinetuneConfig()):
        assert field_help(cls).get(name), f"{cls.__name__}.{name} has no help (a string under the field)"
        if set_by_workflow:
            assert flag(name) not in actions
            continue
        assert flag(name) in actions, f"{cls.__name__}.{name} has no flag"
        assert actions[flag(name)].help.strip(), flag(name)
        seen += 1
    generated = {s for s in actions if not s.startswith("--no-")} - {"--help", "--data"}
    assert seen == len(list(options(FinetuneConfig()))) == len(generated)


def test_help_is_the_configs_with_the_workflows_defaults(parser):
    text = parser.format_help()
    assert "a Transformer with `tokenizer=`" not in text  # no Python docstring as the description
    assert "LoraConfig:" in text and "TrainConfig:" in text
    actions = _actions(parser)
    assert "(default: runs/finetune)" in actions["--out"].help  # FinetuneConfig's run folder, not RunConfig's
    assert "full 5e-5" in actions["--lr"].help and actions["--lr"].default is None
    assert actions["--schedule"].choices == ("cosine", "linear", "constant")
    assert actions["--prompt-init"].choices == ("random", "vocab", "text")


def test_parsed_flags_make_the_config(parser):
    assert config_from_args(FinetuneConfig(), parser.parse_args(["m", "--data", "d"])) == FinetuneConfig()
    args = parser.parse_args(["m", "--data", "d", "--method", "lora", "--target", "q_proj", "v_proj", "--lr", "1e-3",
                              "--betas", "0.8", "0.95", "--no-shuffle", "--out", "runs/x", "--eval-data", "e.jsonl",
                              "--general-text", "wiki.txt", "--max-steps", "7", "--chat-template"])
    config = config_from_args(FinetuneConfig(), args)
    assert config == override(FinetuneConfig(), method="lora", target=("q_proj", "v_proj"), lr=1e-3, betas=(0.8, 0.95),
                              shuffle=False, out="runs/x", eval_data="e.jsonl", general_text="wiki.txt",
                              max_steps=7, chat_template=True)
    assert config.lora == LoraConfig(target=("q_proj", "v_proj")) and config.train.max_steps == 7
    assert config.run.out == "runs/x" and config.data.chat_template and config.measure.general_text == "wiki.txt"
    train = config.train_config()
    assert (train.lr, train.out_dir, train.betas) == (1e-3, "runs/x", (0.8, 0.95))
    assert FinetuneConfig(method="prompt-tuning").train_config().lr == 3e-2


def test_bad_flags_and_values_are_refused(parser):
    with pytest.raises(SystemExit):
        parser.parse_args(["m", "--data", "d", "--schedule", "step"])
    with pytest.raises(TypeError, match="unknown option 'lora_rnk'"):
        override(FinetuneConfig(), lora_rnk=4)
    with pytest.raises(TypeError, match="unknown option 'out_dir'"):  # the workflow sets it from run.out
        override(FinetuneConfig(), out_dir="x")
    for make, message in [(lambda: LoraConfig(lora_rank=0), "rank must be a positive integer"),
                          (lambda: PromptTuningConfig(prompt_init="zeros"), "unknown prompt-tuning init"),
                          (lambda: FinetuneConfig(method="qlora"), "unknown method"),
                          (lambda: override(FinetuneConfig(), method="lora", strategy="fsdp"), "FSDP"),
                          (lambda: TrainConfig(lr=-1.0), "lr must be positive")]:
        with pytest.raises(ValueError, match=message):
            make()


def test_a_field_without_a_command_line_form_fails_loudly():
    @dataclasses.dataclass
    class Odd:
        mapping: dict = dataclasses.field(default_factory=dict)
        """no flag can carry this"""

    with pytest.raises(TypeError, match="Odd.mapping: no command-line form"):
        add_config_arguments(argparse.ArgumentParser(), Odd())


def test_optional_numbers_take_none_lists_repeat_and_numbers_are_finite(parser):
    args = parser.parse_args(["m", "--data", "d", "--max-grad-norm", "none", "--max-steps", "None", "--method", "lora",
                              "--target", "q_proj", "--target", "k_proj", "v_proj"])
    config = config_from_args(FinetuneConfig(), args)
    assert config.train.max_grad_norm is None and config.train.max_steps is None
    assert config.lora.target == ("q_proj", "k_proj", "v_proj")  # the first use replaces the default
    for bad in (["--epochs", "inf"], ["--lr", "nan"], ["--batch-size", "none"], ["--batch-size", "2.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["m", "--data", "d", *bad])


def test_number_lists_take_commas_or_spaces():
    from gencycle.cli import evaluate as evaluate_cli
    from gencycle.workflows import EvaluateConfig
    subparsers = argparse.ArgumentParser(prog="gencycle").add_subparsers()
    evaluate_cli.register(subparsers)
    evaluate = subparsers.choices["evaluate"]
    for shots in (["0,1,3"], ["0", "1", "3"], ["0,1", "3"]):
        assert config_from_args(EvaluateConfig(), evaluate.parse_args(["--shots", *shots])).shots == (0, 1, 3)
    assert config_from_args(EvaluateConfig(), evaluate.parse_args([])).shots == (0, 1, 3)
    specs = evaluate.parse_args(["--config", "greedy", "--config", "sample:temperature=0.7,top_p=0.9"])
    assert config_from_args(EvaluateConfig(), specs).config == ("greedy", "sample:temperature=0.7,top_p=0.9")
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--shots", "0,x"])


def test_config_errors_are_option_errors_naming_the_field():
    from gencycle.errors import OptionError
    from gencycle.workflows import EvaluateConfig, PromptConfig, RunConfig
    for make, option in [(lambda: TrainConfig(batch_size=0), "batch_size"), (lambda: TrainConfig(betas=(0.9, 1.0)), "betas"),
                         (lambda: TrainConfig(max_steps=0), "max_steps"), (lambda: TrainConfig(eval_every=0), "eval_every"),
                         (lambda: EvaluateConfig(batch_size=-2), "batch_size"), (lambda: EvaluateConfig(limit=0), "limit"),
                         (lambda: EvaluateConfig(config=("nucleus",)), "config"), (lambda: PromptConfig(index=-1), "index"),
                         (lambda: RunConfig(dtype="int8"), "dtype"), (lambda: override(FinetuneConfig(), template="foo"),
                                                                     "template")]:
        with pytest.raises(OptionError) as error:
            make()
        assert error.value.option == option
