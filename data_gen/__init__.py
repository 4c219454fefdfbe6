"""Stage 1 of DD: teacher trajectories mapped by AR flow matching, written as pair shards."""
