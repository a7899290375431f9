"""`make paper`: the paper's tables at toy scale, with seeds (`python -m paper.tables run`)."""
