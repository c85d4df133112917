"""``once`` reuses a result only for data named shared, viewed the same way, in the block."""

import torch

from trustlab.kernels.registry import data_key, once, shared_results


def test_once_computes_a_result_once_for_shared_data_inside_the_block():
    calls = []

    def colsum(t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return t.sum(0)

    x, other = torch.randn(4, 3), torch.randn(4, 3)
    with shared_results({data_key(x), data_key(x.t())}):
        first = once("colsum", x, colsum)
        again = once("colsum", x.view(4, 3), colsum)  # another tensor object, same data
        transposed = once("colsum", x.t(), colsum)  # same data, another view: computed anew
        once("colsum", other, colsum)  # not named shared: computed, not kept
        once("colsum", other, colsum)
    assert len(calls) == 4 and again is first
    torch.testing.assert_close(transposed, x.sum(1))
    once("colsum", x, colsum)  # outside a block nothing is kept
    assert len(calls) == 5
