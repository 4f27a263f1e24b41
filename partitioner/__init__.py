"""ONNX graph analysis, candidate cuts, head/tail extraction and plans."""
