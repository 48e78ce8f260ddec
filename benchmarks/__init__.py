"""Speed benchmarks: each prints ratios measured side by side in one run (`mtrl bench ...`)."""
