"""One module per stage, each holding run(cfg); kit/pipeline.py is the table of them."""
