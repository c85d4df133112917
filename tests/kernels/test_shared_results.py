"""``once`` reuses a result only for the same data viewed the same way, inside the block."""

import torch

from trustlab.kernels.registry import once, shared_results


def test_once_computes_a_result_once_per_data_inside_the_block():
    calls = []

    def colsum(t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return t.sum(0)

    x = torch.randn(4, 3)
    with shared_results():
        first = once("colsum", x, colsum)
        again = once("colsum", x.view(4, 3), colsum)  # another tensor object, same data
        other = once("colsum", x.t(), colsum)  # same data, another view: computed anew
        copy = once("colsum", x.clone(), colsum)  # other data: computed anew
    assert len(calls) == 3 and again is first
    torch.testing.assert_close(other, x.sum(1))
    torch.testing.assert_close(copy, first)
    once("colsum", x, colsum)  # outside a block nothing is kept
    assert len(calls) == 4
