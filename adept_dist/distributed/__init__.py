"""The distributed layer: the process group and collectives, the DeepSpeed JSON, ZeRO state and engines, the node topology, the traffic counter, the comm op's build."""
