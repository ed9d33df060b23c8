"""The embedded task of the default recipe: column addition with worked steps, and its character tokenizer."""
