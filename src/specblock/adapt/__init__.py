"""Cost-aware online adaptation (design §8): the drafter keeps learning from the verifier's
free feedback while it generates, when the bandit expects the update to pay for itself."""
