"""A complete molorec-bench plugin: score each candidate by how often it followed the
user's last few items in the training sequences."""

from collections import Counter, defaultdict

import numpy as np

from bench.api import System


class ItemCoOccurrence(System):
    name = "ItemCoOccurrence"
    group = "Traditional"
    profiles = {"default": {"window": 3}}  # every profile; list one to differ there

    def fit(self, data, valid):
        self.next_counts = defaultdict(Counter)
        for seq in data.train:
            for t in seq.target_positions():
                self.next_counts[seq.items[t - 1]][seq.items[t]] += 1

    def score(self, requests):
        out = np.zeros((len(requests), len(requests[0].candidates)))
        for n, req in enumerate(requests):
            for back, item in enumerate(reversed(req.history[-self.config["window"]:])):
                follow = self.next_counts.get(item, {})
                out[n] += [follow.get(c, 0) / (back + 1) for c in req.candidates]
        return out
