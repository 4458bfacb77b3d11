"""Scale schedules: token counts, ids and boundaries agree, bad schedules fail clearly."""

import numpy as np
import pytest

from varjax import scales


@pytest.mark.parametrize("name,length", [("256", 680), ("512", 2240), ("32", 30), ("64", 130)])
def test_known_schedules_have_the_var_token_counts(name, length):
  pn = scales.SCHEDULES[name]
  assert scales.num_tokens(pn) == length
  b = scales.boundaries(pn)
  ids = scales.scale_ids(pn)
  assert b[0] == 0 and b[-1] == length and len(ids) == length
  # Every token's scale id places it inside that scale's [start, end).
  for k in range(len(pn)):
    assert np.all(ids[b[k]:b[k + 1]] == k)


@pytest.mark.parametrize("bad,msg", [((), "at least one"), ((0, 1), ">= 1"), ((2, 2), "increase")])
def test_bad_schedules_raise_clear_errors(bad, msg):
  with pytest.raises(ValueError, match=msg):
    scales.validate(bad)
