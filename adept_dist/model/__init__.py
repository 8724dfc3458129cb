"""The model: the ADePT/DePT/PT adapters, the frozen backbone and its files, the layer-by-layer loader, GGUF models, the built-in demo model, the LM that puts the soft prompt in front."""
