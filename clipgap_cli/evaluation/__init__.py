"""Detection metrics (VOC AP50, COCO AP) and the tables and charts of `clipgap evaluate`."""
