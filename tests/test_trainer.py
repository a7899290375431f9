"""trainer.py: the data order over ranks and micro-steps, the learning-rate schedule, the NaN stop.
The whole loop on real stages (resume, DDP) is exercised in test_training.py."""
import pytest
import torch

import data
import pretrain
import trainer
from checkpoints import ModelSpec, load_checkpoint
from palm_decoder import PaLMConfig, PaLMDecoder


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    texts = ["a red circle", "two blue squares", "a green star above a cross"] * 4
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    model = PaLMDecoder(PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=1, num_heads=2))
    calls = []

    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        calls.append(1)
        return (loss_sum * float("nan") if len(calls) == 5 else loss_sum), count

    config = trainer.TrainConfig(out_dir=str(tmp_path / "run"), steps=8, batch_size=4, save_every=2, eval_every=100)
    dataset = data.TextDataset([[text] for text in texts], tokenizer)
    with pytest.raises(FloatingPointError, match="step 4.*last good checkpoint"):
        trainer.train(model, loss_fn, dataset, dataset, lambda s: data.collate(s, tokenizer.pad_id), config, "pretrain-lm",
                      ModelSpec(lm=model.config))
    assert load_checkpoint(str(tmp_path / "run"))["step"] == 4
    assert torch.isfinite(torch.cat([t.flatten() for t in load_checkpoint(str(tmp_path / "run"))["model"].values()])).all()



def test_step_batches_split_one_global_batch_over_ranks_and_micro_steps():
    groups = [10, 6]
    whole = list(trainer.StepBatches(groups, 4, 1, 0, 1, seed=3, start_step=0, end_step=7))
    split = [trainer.StepBatches(groups, 4, 2, rank, 2, seed=3, start_step=0, end_step=7) for rank in (0, 1)]
    pieces = [list(s) for s in split]
    for step in range(7):
        rebuilt = pieces[0][2 * step] + pieces[0][2 * step + 1] + pieces[1][2 * step] + pieces[1][2 * step + 1]
        assert rebuilt == whole[step]
        assert len({i >= 10 for i in whole[step]}) == 1, "a batch never mixes groups"
    resumed = list(trainer.StepBatches(groups, 4, 1, 0, 1, seed=3, start_step=4, end_step=7))
    assert resumed == whole[4:]
    group_0 = sorted(i for batch in whole for i in batch if i < 10)
    assert all(group_0.count(i) <= group_0.count(j) + 1 for i in range(10) for j in range(10)), "epochs are permutations"
    with pytest.raises(ValueError, match="multiple of world_size"):
        trainer.StepBatches(groups, 5, 1, 0, 2, 0, 0, 1)


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    config = trainer.TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert [trainer.learning_rate_factor(step, config) for step in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert trainer.learning_rate_factor(10, config) == pytest.approx(1.0)
    assert trainer.learning_rate_factor(60, config) == pytest.approx(0.55)
    assert trainer.learning_rate_factor(110, config) == pytest.approx(0.1)
    assert trainer.learning_rate_factor(500, config) == pytest.approx(0.1)
