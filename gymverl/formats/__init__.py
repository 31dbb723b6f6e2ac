"""Output row builders, one module per VeRL format (rl, sft, dpo); each is a pure `record -> row` function."""
