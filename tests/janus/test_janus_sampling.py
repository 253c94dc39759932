import torch

from janus.sampling import GREEDY, RowSampler, RowSampling, filter_logits


def test_greedy_ties_pick_the_first_index():
    sampler = RowSampler([GREEDY, GREEDY], vocab=4, device=torch.device("cpu"))
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert sampler.sample(logits).tolist() == [1, 0]


def test_top_k_keeps_ties_at_the_cut():
    scaled = torch.tensor([[5.0, 4.0, 4.0, 1.0, 0.0]])
    kept = filter_logits(scaled, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(kept).tolist() == [[True, True, True, False, False]]


def test_top_p_keeps_the_smallest_head_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scaled = probs.log()
    kept = filter_logits(scaled, torch.tensor([4]), torch.tensor([0.7]))
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(scaled, torch.tensor([4]), torch.tensor([0.01]))
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]
    kept = filter_logits(scaled, torch.tensor([4]), torch.tensor([1.0]))
    assert torch.isfinite(kept).all()


def test_a_rows_stream_does_not_depend_on_its_neighbours():
    vocab = 50
    row = RowSampling(seed=11, temperature=1.0, top_k=20)
    logits = torch.randn(40, vocab, generator=torch.Generator().manual_seed(0))
    alone = RowSampler([row, GREEDY, GREEDY], vocab, torch.device("cpu"))
    others = [RowSampling(seed=s, temperature=0.5 + s / 10) for s in range(2)]
    mixed = RowSampler([others[0], row, others[1]], vocab, torch.device("cpu"))
    for step in range(40):
        a = alone.sample(torch.stack([logits[step], logits[step - 1], logits[step - 2]]))
        b = mixed.sample(torch.stack([logits[step - 3], logits[step], logits[step - 5]]))
        assert a[0] == b[1]


def test_sampling_follows_the_distribution_and_respects_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).log_softmax(-1)
    sampler = RowSampler([RowSampling(seed=3, temperature=1.0)], 4, torch.device("cpu"))
    counts = torch.bincount(torch.cat([sampler.sample(logits) for _ in range(4000)]), minlength=4)
    expected = logits.softmax(-1)[0] * 4000
    assert torch.allclose(counts.float(), expected, rtol=0.15, atol=30)
    top2 = RowSampler([RowSampling(seed=3, temperature=5.0, top_k=2)], 4, torch.device("cpu"))
    assert set(torch.cat([top2.sample(logits) for _ in range(300)]).tolist()) == {0, 1}


def test_top_p_of_one_keeps_the_whole_tail():
    logits = torch.cat([torch.tensor([30.0]), torch.full((999,), -30.0)]).unsqueeze(0)
    sampler = RowSampler(
        [
            RowSampling(seed=1, temperature=1.0, top_p=1.0),
            RowSampling(seed=2, top_k=1, temperature=1),
        ],
        1000,
        torch.device("cpu"),
    )
    assert sampler.filtering
    assert torch.isfinite(filter_logits(logits, sampler.top_k[:1], sampler.top_p[:1])).all()
