"""feature_cache.py: the frozen ViT runs once per (modality, id); features kept in bf16 within a
byte budget, least recently used out; videos keep their real frames only."""

from collections import Counter

import torch

from support.feature_cache import FeatureCache


def counting_encoder(encoded: Counter):
    weights = torch.randn(3, 5, requires_grad=True)

    def encode(pixels):  # images (n, 3) -> (n, 2, 5); videos (n, T, 3) -> (n, T, 2, 5)
        encoded.update(
            pixels.reshape(-1, 3)[:, 0].long().tolist()
            if pixels.dim() == 2
            else [f"video {int(i)}" for i in pixels[:, 0, 0]]
        )
        return (pixels @ weights).unsqueeze(-2).repeat_interleave(2, dim=-2)

    return encode


def images(ids):
    return torch.tensor([[float(i), 1.0, 2.0] for i in ids])


def test_the_encoder_runs_once_per_image_and_features_come_back_as_bf16_rounds_them():
    encoded = Counter()
    encode = counting_encoder(encoded)
    cache = FeatureCache()
    first = cache.get_or_compute([1, 2, 2, 3], images([1, 2, 2, 3]), encode)
    second = cache.get_or_compute([3, 4, 1], images([3, 4, 1]), encode)
    assert encoded == Counter({1: 1, 2: 1, 3: 1, 4: 1}) and len(cache) == 4
    assert first.shape == (4, 2, 5) and first.dtype == torch.float32 and not second.requires_grad
    assert all(features.dtype == torch.bfloat16 for features in cache.features.values())
    assert (
        torch.equal(second[0], first[3])
        and torch.equal(second[2], first[0])
        and torch.equal(first[1], first[2])
    )
    # exactly the bf16 rounding
    assert torch.equal(second, encode(images([3, 4, 1])).detach().bfloat16().float())
    assert cache.bytes == 4 * 2 * 5 * 2  # 4 images of (2, 5) bf16 values


def test_an_image_and_a_video_with_the_same_id_do_not_collide():
    encoded = Counter()
    encode = counting_encoder(encoded)
    cache = FeatureCache()
    image = cache.get_or_compute([7], images([7]), encode)
    # one 2-frame "video"
    video = cache.get_or_compute(
        [7], torch.full((1, 2, 3), 7.0), encode, num_frames=torch.tensor([2])
    )
    assert (
        image.shape == (1, 2, 5)
        and video.shape == (1, 2, 2, 5)
        and set(cache.features) == {("image", 7), ("video", 7)}
    )
    assert encoded == Counter({7: 1, "video 7": 1})


def test_the_budget_evicts_the_least_recently_used():
    encoded = Counter()
    encode = counting_encoder(encoded)
    per_image = 2 * 5 * 2  # bytes of one image's bf16 features
    cache = FeatureCache(max_bytes=3 * per_image)
    cache.get_or_compute([1, 2, 3], images([1, 2, 3]), encode)
    cache.get_or_compute([1], images([1]), encode)  # 1 is now the newest: 2 is the oldest
    cache.get_or_compute([4], images([4]), encode)
    assert [key[1] for key in cache.features] == [3, 1, 4] and cache.bytes == 3 * per_image
    cache.get_or_compute([2], images([2]), encode)  # evicted, so encoded again
    assert (
        encoded == Counter({1: 1, 2: 2, 3: 1, 4: 1})
        and f"at most {3 * per_image / 2**30:g} GB" in cache.describe()
    )
    assert "bf16" in cache.describe() and "least recently used" in cache.describe()


def test_videos_keep_their_real_frames_and_come_back_padded_to_the_batch():
    encoded = Counter()
    encode = counting_encoder(encoded)
    cache = FeatureCache()
    pixels = torch.zeros(2, 4, 3)  # two "videos" padded to 4 frames; the first has 2 real ones
    pixels[0, :2], pixels[1] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 1.0])
    out = cache.get_or_compute([10, 11], pixels, encode, num_frames=torch.tensor([2, 4]))
    assert cache.features[("video", 10)].shape == (2, 2, 5) and cache.features[
        ("video", 11)
    ].shape == (4, 2, 5)
    assert torch.equal(out[0, 2:], torch.zeros(2, 2, 5))
    # a batch of 2 frames
    alone = cache.get_or_compute([10], pixels[:1, :2], encode, num_frames=torch.tensor([2]))
    assert alone.shape == (1, 2, 2, 5) and torch.equal(alone[0], out[0, :2]) and len(encoded) == 2


def test_a_batch_fetched_from_the_cache_comes_back_and_ages_as_a_computed_one():
    """data.VisionTextDataset.__getitems__ reads a batch's features with `lookup` and decodes no
    pixels; `fetched` then gives what get_or_compute would, and marks the same entries used."""
    encoded = Counter()
    encode = counting_encoder(encoded)
    per_image = 2 * 5 * 2
    computed, fetched = FeatureCache(3 * per_image), FeatureCache(3 * per_image)
    for cache in (computed, fetched):
        cache.get_or_compute([1, 2, 3], images([1, 2, 3]), encode)
    assert fetched.lookup([("image", 1), ("image", 4)]) is None
    found = fetched.lookup([("image", 1), ("image", 3), ("image", 1)])
    assert [key[1] for key in fetched.features] == [1, 2, 3]  # lookup only reads
    assert torch.equal(
        fetched.fetched([1, 3, 1], found, None, "cpu"),
        computed.get_or_compute([1, 3, 1], images([1, 3, 1]), encode),
    )
    assert list(fetched.features) == list(computed.features) and len(encoded) == 3
    # evicted between the fetch and the loss (an earlier micro-batch of the step encoded a new
    # image): the batch still holds its features, and they go back in
    found = fetched.lookup([("image", 2)])
    fetched.get_or_compute([4], images([4]), encode)
    assert ("image", 2) not in fetched.features
    assert torch.equal(fetched.fetched([2], found, None, "cpu")[0], found[0].float())
    assert [key[1] for key in fetched.features] == [1, 4, 2] and fetched.bytes == 3 * per_image
    # videos come back padded to the batch's longest real frame count
    videos = FeatureCache()
    pixels = torch.zeros(2, 4, 3)
    pixels[0, :2], pixels[1] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 1.0])
    out = videos.get_or_compute([10, 11], pixels, encode, num_frames=torch.tensor([2, 4]))
    again = videos.fetched(
        [11, 10], videos.lookup([("video", 11), ("video", 10)]), torch.tensor([4, 2]), "cpu"
    )
    assert torch.equal(again, out[[1, 0]])
    shorter = videos.fetched([10], videos.lookup([("video", 10)]), torch.tensor([2]), "cpu")
    assert shorter.shape == (1, 2, 2, 5) and torch.equal(shorter[0], out[0, :2])
