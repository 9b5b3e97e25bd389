"""Training-data sources of real runs: prompt sets and labelled preference datasets."""
