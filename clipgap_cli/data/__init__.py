"""Dataset preparation: VOC-XML conversion, the synthetic benchmark and the dataset spec."""
