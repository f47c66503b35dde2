"""The model contract and its Triton repository: export, signature, configs, versions, quantisation."""
