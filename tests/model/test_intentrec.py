"""IntentRec's streaming constraints, variants and checkpoints."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import IntentRecConfig, variant_overrides
from model.features import CATALOGUE_DTYPE, NO_RELEASE, ROW_DTYPE, batch_tensors, catalogue_entries
from model.inputs import attention_mask, model_inputs
from model.config import task_sizes
from model.intentrec import IntentRec, SelfAttention, intent_probabilities
from model.item_layer import Intent
from model.serving.scorer import Scorer, padded_length
from model.vocab import UNKNOWN, Vocabularies, Vocabulary
from schemas import ModelRef

HOUR = 3_600_000
DAY = 24 * HOUR


CATALOGUE = slice(2, 30)  # tiny_config's real items: the unknown-title slots follow them


def tiny_config(**overrides) -> IntentRecConfig:
    base = IntentRecConfig(
        n_items=30, n_actions=6, n_kinds=4, n_release_buckets=6, n_devices=5, n_genres=9,
        d_item=16, d_small=4, d_model=16, d_proj=8, n_heads=2, attention_window=4,
        n_layers_short=1, n_layers_intent=1, n_layers_item=2, dropout=0.0,
        short_term_window_ms=10 * HOUR, time_origin_ms=1_600_000_000_000,
        new_title_min_users=1,  # the open-catalogue tests register titles from one user's plays
    )
    return replace(base, **overrides)


# Every ablation, and the paper's own item layer (no repeat pointer, no IntentMatch) under V0 and V3.
ARCHITECTURES = ["V0", "V1", "V2", "V3", "V0-paper", "V3-paper"]


def architecture(name: str) -> dict:
    """Config overrides of one of ARCHITECTURES."""
    variant, _, paper = name.partition("-")
    return {**variant_overrides(variant), **({"repeat_and_match": False} if paper else {})}


def random_history(n: int, seed: int = 0, max_gap_ms: int = 20 * HOUR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, dtype=ROW_DTYPE)
    rows["item"] = rng.integers(2, 30, n)
    rows["action"] = rng.integers(2, 6, n)
    rows["kind"] = rng.integers(2, 4, n)
    rows["release"] = rng.integers(1, 6, n)
    rows["device"] = rng.integers(1, 5, n)
    rows["genres"][:, :2] = rng.integers(2, 9, (n, 2))
    rows["ts"] = 1_600_000_000_000 + np.cumsum(rng.integers(60_000, max_gap_ms, n))
    rows["watch_s"] = rng.uniform(0, 3600, n)
    return rows


def random_catalogue(n: int, seed: int = 0) -> np.ndarray:
    """Catalogue entries of random items, released up to three years before the origin (some unknown)."""
    rows = random_history(n, seed)
    rng = np.random.default_rng(seed)
    release_ts = rows["ts"] - rng.integers(0, 3 * 365 * DAY, n)
    release_ts[rng.random(n) < 0.2] = NO_RELEASE
    return catalogue_entries(rows, [SimpleNamespace(release_ts=None if ts == NO_RELEASE else ts) for ts in release_ts])


def random_model(config: IntentRecConfig) -> IntentRec:
    """An untrained model whose every path counts: a catalogue learnt from random rows, and random
    values in the parameters that start at zero (they would hide the intent-matching paths)."""
    model = IntentRec(config)
    model.learn_catalogue(random_catalogue(60, seed=99))
    with torch.no_grad():
        for parameter in (model.item_layer.intent_match, model.item_encoder.intent_gate):
            if parameter is not None:
                for weights in parameter.parameters():
                    weights.normal_()
        for module in model.modules():
            if isinstance(module, SelfAttention) and module.distance_bias is not None:
                module.distance_bias.normal_()
    return model.eval()


def tiny_vocab() -> Vocabularies:
    return Vocabularies(
        items=Vocabulary(f"i{i}" for i in range(28)),
        actions=Vocabulary(["a", "b", "c", "d"]),
        kinds=Vocabulary(["movie", "show"]),
        release=Vocabulary(["new", "recent", "catalog", "classic"]),
        devices=Vocabulary(["tv", "web", "mobile"]),
        genres=Vocabulary(f"g{i}" for i in range(7)),
    )


def run(model, histories, length: int | None = None, **options):
    """The forward pass over right-padded histories: p(next item) after every position."""
    rows = batch_tensors(histories, length or max(len(h) for h in histories))
    return model(model_inputs(rows, model.config), **options)


def test_attention_mask_is_causal_windowed_time_limited_and_padded():
    ts = torch.tensor([[0, 1, 2, 20, 21, 0]]) * HOUR
    valid = torch.tensor([[True] * 5 + [False]])
    mask = attention_mask(valid, ts, window=3, max_age_ms=10 * HOUR)[0]
    assert mask[2].tolist() == [True, True, True, False, False, False]
    assert mask[4].tolist() == [False, False, False, True, True, False]  # 2 is 19 h older than 4
    assert mask[3].tolist() == [False, False, False, True, False, False]  # window 3, but 1..2 too old
    assert mask[5].tolist() == [False] * 5 + [True]  # padding attends only to itself
    assert not mask[:, 5][:5].any()  # nobody attends to padding


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_past_outputs_do_not_change_when_an_event_arrives(variant):
    model = IntentRec(tiny_config(**architecture(variant))).eval()
    history = random_history(12)
    with torch.no_grad():
        full = run(model, [history])
        prefix = run(model, [history[:7]])
    torch.testing.assert_close(full.item_probs[0, :7], prefix.item_probs[0, :7])
    if full.intent_embedding is not None:
        torch.testing.assert_close(full.intent_embedding[0, :7], prefix.intent_embedding[0, :7])


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_the_last_history_len_interactions_decide_the_prediction(variant):
    config = tiny_config(**architecture(variant))
    torch.manual_seed(0)
    model = IntentRec(config).eval()
    history = random_history(config.history_len + 9, max_gap_ms=HOUR)  # all within the short-term window
    with torch.no_grad():
        full = run(model, [history]).item_probs[0, -1].log()
        cut = run(model, [history[-config.history_len :]]).item_probs[0, -1].log()
        too_short = run(model, [history[-(config.history_len // 2) :]]).item_probs[0, -1].log()
    torch.testing.assert_close(full, cut)
    assert (full - too_short)[CATALOGUE].abs().max() > 1e-4  # older interactions do matter


def test_padding_and_batch_composition_do_not_change_a_prediction():
    model = IntentRec(tiny_config()).eval()
    short, long = random_history(1, seed=1), random_history(9, seed=2)
    with torch.no_grad():
        alone = run(model, [short]).item_probs[0, 0].log()
        batched = run(model, [short, long], length=16).item_probs[0, 0].log()
    torch.testing.assert_close(alone, batched)
    assert torch.isfinite(alone[CATALOGUE]).all()  # a user with one interaction is valid input


def test_embeddings_can_start_small_with_padding_at_zero():
    model = IntentRec(tiny_config(embedding_init_std=0.02))
    weights = model.features.item.weight
    assert weights[0].abs().max() == 0 and 0.01 < weights[2:].std() < 0.03


def test_variants_differ_as_the_paper_describes():
    v0 = tiny_config(**variant_overrides("V0"))
    v1 = tiny_config(**variant_overrides("V1"))
    v2 = tiny_config(**variant_overrides("V2"))
    assert v0.intent_tasks == () and not v0.feeds_intent
    assert v1.intent_tasks and not v1.feeds_intent
    assert not v2.use_short_term and v2.feeds_intent
    assert IntentRec(v2).short_term is None
    out = run(IntentRec(v0).eval(), [random_history(3)])
    assert out.intent_embedding is None and out.intent_logits == {}


def test_intent_weights_are_a_distribution_over_tasks():
    model = IntentRec(tiny_config()).eval()
    with torch.no_grad():
        out = run(model, [random_history(5)])
    assert out.intent_weights.shape == (1, 5, 4)
    torch.testing.assert_close(out.intent_weights.sum(-1), torch.ones(1, 5))


def test_padded_length_buckets():
    assert [padded_length(n, 100) for n in (1, 8, 9, 33, 99)] == [8, 8, 16, 64, 100]


def test_checkpoint_round_trip(tmp_path):
    model = IntentRec(tiny_config()).eval()
    save_checkpoint(tmp_path, model, tiny_vocab(), {"name": "t", "version": "1"})
    loaded, vocab, meta = load_checkpoint(tmp_path)
    history = random_history(6)
    with torch.no_grad():
        torch.testing.assert_close(run(model, [history]).item_probs, run(loaded, [history]).item_probs)
    assert vocab.items.token(2) == "i0" and meta["name"] == "t"
    scorer = Scorer.load(tmp_path)
    assert scorer.model_ref == ModelRef("t", "1")
    (scores,) = scorer.score([history], top_k=5)
    assert len(scores.next_items) == 5 and len(scores.intent_embedding) == 8
    assert [s.score for s in scores.next_items] == sorted((s.score for s in scores.next_items), reverse=True)


@pytest.mark.parametrize("option", ["relative_positions", "pointer_over_titles"])
def test_a_checkpoint_from_before_an_option_loads_without_it(tmp_path, option):
    model = IntentRec(tiny_config(**{option: False})).eval()
    save_checkpoint(tmp_path, model, tiny_vocab(), {})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["model"][option]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, _, _ = load_checkpoint(tmp_path)
    assert not getattr(loaded.config, option)
    history = random_history(6)
    with torch.no_grad():
        torch.testing.assert_close(run(model, [history]).item_probs, run(loaded, [history]).item_probs)


def test_bad_checkpoints_are_refused_with_a_reason(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    model = IntentRec(tiny_config())
    save_checkpoint(tmp_path, model, tiny_vocab(), {})
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, model, tiny_vocab(), {})
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["d_model"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match config.json: tensor \S+ has shape \(16,\) but the config gives \(32,\)"):
        load_checkpoint(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="vocab.json is missing"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "field, value, words",
    [("n_heads", 0, "n_heads=0 must be a whole number of at least 1"),
     ("n_items", -1, "n_items=-1: a vocabulary size"),
     ("dropout", 5, "dropout=5 must be a probability"),
     ("input_dropout", 1.0, "input_dropout=1.0 must be a probability"),
     ("embedding_init_std", 0, "embedding_init_std=0 must be > 0"),
     ("d_model", "64", "d_model='64' must be a whole number")],
)
def test_a_config_json_with_impossible_values_is_refused_in_one_line(tmp_path, field, value, words):
    save_checkpoint(tmp_path, IntentRec(tiny_config()), tiny_vocab(), {})
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is not a valid model config") as refused:
        load_checkpoint(tmp_path)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_training_probabilities_of_targets_equal_the_full_distribution():
    model = random_model(tiny_config())  # IntentMatch and the intent gate take part in the mixture
    history = random_history(10)
    targets = torch.from_numpy(np.roll(history["item"], -1).astype(np.int64)).unsqueeze(0)
    with torch.no_grad():
        full = run(model, [history]).item_probs
        chosen = run(model, [history], targets=targets).item_probs
    torch.testing.assert_close(chosen, full.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(full[..., 2:].sum(-1), torch.ones(1, 10))  # a distribution over real items
    assert (full[..., :2] == 0).all()  # padding and unknown are never predicted


def test_the_repeat_pointer_only_reaches_items_in_the_window():
    model = IntentRec(tiny_config(attention_window=3)).eval()
    history = random_history(8)
    history["item"] = [2, 3, 4, 5, 6, 7, 8, 9]
    with torch.no_grad():
        model.item_encoder.repeat_gate.bias.fill_(-50.0)  # all explore
        explore_only = run(model, [history]).item_probs[0, -1].log()
        model.item_encoder.repeat_gate.bias.fill_(50.0)  # all repeat
        repeat_only = run(model, [history]).item_probs[0, -1]
    assert repeat_only[[7, 8, 9]].sum() == pytest.approx(1.0, abs=1e-5)  # the last 3 items only
    assert torch.isfinite(explore_only[CATALOGUE]).all()


@pytest.mark.parametrize("over_titles", [True, False])
def test_the_repeat_pointer_reaches_a_user_s_unknown_titles_through_their_slots(over_titles):
    config = tiny_config(attention_window=8, unknown_slots=3, pointer_over_titles=over_titles)
    model = IntentRec(config).eval()
    history = random_history(6)
    history["item"] = [2, 30, 3, 32, 30, 4]  # slots 0 and 2: two titles the vocabulary lacks
    as_unknown = history.copy()
    as_unknown["item"] = [2, UNKNOWN, 3, UNKNOWN, UNKNOWN, 4]
    with torch.no_grad():
        slotted = run(model, [history]).item_probs[0, -1]
        unslotted = run(model, [as_unknown]).item_probs[0, -1]
    assert slotted.shape == (config.n_items + config.unknown_slots,)  # no new-title columns without new titles
    assert slotted[30] > 0 and slotted[32] > 0 and slotted[31] == 0  # only played slots get weight
    assert slotted.sum() == pytest.approx(1.0, abs=1e-5)
    if over_titles:  # each slot is a title of its own, where UNKNOWN stood for both
        assert slotted[[30, 32]].sum() != pytest.approx(unslotted[UNKNOWN].item(), rel=1e-3)
        return
    # The slots only direct the pointer: the embeddings see the unknown item, the catalogue is unchanged.
    torch.testing.assert_close(slotted[CATALOGUE], unslotted[CATALOGUE])
    assert slotted[30] + slotted[32] == pytest.approx(unslotted[UNKNOWN].item(), rel=1e-5)


def test_the_pointer_over_titles_reads_each_title_once_by_its_place_and_plays():
    """A show played once between two binges of another: a key for each title (its latest play), scored
    by its place among the titles by last play and by the log of its plays; equal content scores."""
    model = IntentRec(tiny_config(attention_window=8)).eval()
    history = random_history(8)
    history["item"] = [5, 5, 5, 3, 5, 5, 5, 5]
    titles = model.item_encoder.titles

    def repeat(rank_bias: list[float], count_weight: float) -> torch.Tensor:
        with torch.no_grad():
            model.item_encoder.repeat_gate.bias.fill_(50.0)  # all repeat
            model.item_encoder.repeat_query.weight.zero_()  # every key scores alike but for the title terms
            model.item_encoder.repeat_query.bias.zero_()
            titles.rank_bias.copy_(torch.tensor(rank_bias + [0.0] * (8 - len(rank_bias))))
            titles.count_weight.fill_(count_weight)
            return run(model, [history]).item_probs[0, -1]

    assert repeat([0.0], 1.0)[[5, 3]].tolist() == pytest.approx([7 / 8, 1 / 8], abs=1e-5)  # as positions would
    assert repeat([0.0], 0.0)[[5, 3]].tolist() == pytest.approx([1 / 2, 1 / 2], abs=1e-5)  # one key per title
    assert repeat([0.0, math.log(3)], 0.0)[[5, 3]].tolist() == pytest.approx([1 / 4, 3 / 4], abs=1e-5)  # 3 is 2nd
    with torch.no_grad():
        pointer = model.encode(model_inputs(batch_tensors([history], 8), model.config)).item_state.pointer[0, -1]
    assert (pointer[[3, 7]] > 0).all() and (pointer[[0, 1, 2, 4, 5, 6]] == 0).all()  # each title's latest play


def test_scoring_only_the_newest_positions_equals_the_full_distribution():
    model = random_model(tiny_config())
    histories = [random_history(9, seed=3), random_history(4, seed=4)]
    newest_last = model_inputs(batch_tensors(histories, 16, left_pad=True), model.config)
    with torch.no_grad():
        full = run(model, histories, length=16)
        newest = model(newest_last, newest=True)
    last = torch.tensor([8, 3])
    torch.testing.assert_close(newest.item_probs, full.item_probs[torch.arange(2), last])
    torch.testing.assert_close(newest.intent_embedding[:, -1], full.intent_embedding[torch.arange(2), last])


def random_intent_probs(config: IntentRecConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return intent_probabilities(
        {task: torch.randn(1, 1, n, generator=generator) for task, n in task_sizes(config).items()}
    )


def test_the_catalogue_learnt_from_rows_ranks_items_that_match_the_predicted_intent_up():
    config = tiny_config()
    model = IntentRec(config).eval()
    origin = config.time_origin_ms
    entries = np.zeros(3, dtype=CATALOGUE_DTYPE)
    entries["item"], entries["kind"] = [5, 6, 7], [2, 3, 3]
    entries["genres"][0, :2] = [4, 7]
    entries["genres"][1, :1] = [8]
    entries["release_ts"] = [origin + 100 * DAY, origin - 1000 * DAY, NO_RELEASE]
    model.learn_catalogue(entries)
    match = model.item_layer.intent_match
    kinds, genres = match.item_attributes[:, :4], match.item_attributes[:, 4:]  # 4 kind labels, 9 genre labels
    assert kinds[[5, 6, 7]].argmax(1).tolist() == [2, 3, 3] and (kinds.sum(1)[[5, 6, 7]] == 1).all()
    assert genres[5].tolist() == pytest.approx([0, 0, 0, 0, 0.5, 0, 0, 0.5, 0])
    assert genres[6, 8] == 1.0 and genres[6].sum() == 1.0
    assert match.item_attributes[[0, 1, 8]].sum() == 0  # padding, unknown, never played
    assert match.item_release_day[[5, 6, 7]].tolist() == [100, -1000, math.inf]

    intent = random_intent_probs(config)
    intent["kind"] = torch.tensor([[[0.0, 0.0, 0.9, 0.1]]])  # item 5's kind is likely
    intent["genre"] = torch.full((1, 1, 9), 0.1)
    intent["genre"][..., 8] = 0.9  # item 6's genre is likely
    intent["release"] = torch.tensor([[[0.0, 0.0, 0.7, 0.1, 0.1, 0.1]]])  # a title out this month
    days = torch.tensor([[110.0]])  # item 5 is 10 days old, item 6 is 1110 days old

    def bonus(kind: float, genre: float, release: float) -> torch.Tensor:
        with torch.no_grad():
            match.weights.copy_(torch.tensor([kind, genre, release]))
            return match(Intent(intent, days, torch.full((1, 1, 4), 0.25)))[0, 0]  # uniform weights: scale 1

    assert bonus(1, 0, 0)[5] > bonus(1, 0, 0)[6]
    assert bonus(0, 1, 0)[6] > bonus(0, 1, 0)[5]
    assert bonus(0, 0, 1)[5] == pytest.approx(math.log(0.7)) and bonus(0, 0, 1)[6] == pytest.approx(math.log(0.1))
    assert bonus(0, 0, 1)[7] == 0  # no release date: no bonus
    # The intent weights scale each task's term: all of it on kind counts kind's term four times.
    on_kind = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])  # config.intent_tasks: action, genre, kind, release
    with torch.no_grad():
        match.weights.copy_(torch.tensor([1.0, 1.0, 1.0]))
        torch.testing.assert_close(match(Intent(intent, days, on_kind))[0, 0], 4 * bonus(1, 0, 0))


def test_only_a_model_that_feeds_intent_to_the_item_encoder_matches_items_to_it():
    for variant, matches in (("V0", False), ("V1", False), ("V2", True), ("V3", True)):
        model = IntentRec(tiny_config(**variant_overrides(variant)))
        assert (model.item_layer.intent_match is not None) == matches
        assert (model.item_encoder.intent_gate is not None) == matches


def test_the_papers_item_layer_is_the_catalogue_softmax_alone():
    """repeat_and_match off: no pointer, gate or IntentMatch; p(next item) is the softmax of the item
    encoder's query against the item embeddings, and training's p(target) is read off it."""
    torch.manual_seed(0)
    model = IntentRec(tiny_config(repeat_and_match=False)).eval()
    encoder = model.item_encoder
    assert model.item_layer.intent_match is None and encoder.intent_gate is None and not hasattr(encoder, "repeat_gate")
    history = random_history(9)
    with torch.no_grad():
        out = run(model, [history])
        probs = out.item_probs[0]
        catalogue, slots = probs[:, : model.config.n_items], probs[:, model.config.n_items :]
        torch.testing.assert_close(catalogue.sum(-1), torch.ones(9))
        assert (slots == 0).all()  # only a pointer reaches a user's unknown-title slots
        targets = torch.from_numpy(np.roll(history["item"], -1).astype(np.int64)).unsqueeze(0)
        x = model_inputs(batch_tensors([history], 9), model.config)
        torch.testing.assert_close(model(x, targets=targets).item_probs[0], probs.gather(-1, targets[0, :, None])[:, 0])


def test_only_intent_weights_that_training_reaches_are_published():
    """V1's item encoder does not read Z, so no loss trains its fusion: its updates carry no weights."""
    for variant, published in (("V0", False), ("V1", False), ("V3", True)):
        scorer = Scorer(IntentRec(tiny_config(**variant_overrides(variant))).eval(), tiny_vocab(), ModelRef("t", "1"))
        (scores,) = scorer.score([random_history(5)])
        assert bool(scores.intent_weights) == published
        assert (scores.intent_embedding != ()) == (variant != "V0")
