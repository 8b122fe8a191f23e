"""Answering from knowledge: the embedding model, the index, search and who to pull in."""
